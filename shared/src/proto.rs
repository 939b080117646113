//! Code generated from `proto/`, and the encoded descriptor set served by reflection.

#[allow(missing_docs, missing_debug_implementations, clippy::all)]
pub mod wallet {
    pub mod v1 {
        tonic::include_proto!("ticketing.wallet.v1");
    }
}

#[allow(missing_docs, missing_debug_implementations, clippy::all)]
pub mod reservation {
    pub mod v1 {
        tonic::include_proto!("ticketing.reservation.v1");
    }
}

#[allow(missing_docs, missing_debug_implementations, clippy::all)]
pub mod admission {
    pub mod v1 {
        tonic::include_proto!("ticketing.admission.v1");
    }
}

/// Every message and service of the three packages, for `grpc.reflection.v1` and `v1alpha`.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("ticketing_descriptor");

/// Converts a database timestamp to its protobuf form.
pub fn timestamp(at: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        // Always within 0..1_000_000_000, so it fits.
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
    }
}
