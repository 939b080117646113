//! The wallet as production runs it: mutual TLS, verified tokens, and who may do what. Every
//! certificate and token here is real, made by the test (shared::test_pki); every refusal is
//! checked for its exact code and reason, and for having written nothing.

use std::time::Duration;

use shared::proto::wallet::v1 as pb;
use shared::proto::wallet::v1::wallet_service_client::WalletServiceClient;
use shared::service::Service as _;
use shared::test_pki::{
    AUDIENCE, ISSUER, SecureSetup, TestCa, TokenIssuer, assert_refused, jwks, tls_channel,
    unix_now, with_token,
};
use shared::tls::{ClientFiles, channel, client_tls};
use tonic::Code;
use tonic::transport::Channel;
use wallet_svc::startup::Application;

use crate::helpers::{TestApp, reason, spawn_app_with};

const RESERVATION: &str = "spiffe://ticketing.local/reservation-svc";
const ANOTHER_SERVICE: &str = "spiffe://ticketing.local/merch-svc";
const ADMIN_TOOL: &str = "spiffe://ticketing.local/admin";

struct Secure {
    app: TestApp,
    setup: SecureSetup,
}

async fn spawn_secure() -> Secure {
    let setup = SecureSetup::new();
    let security = setup.server("wallet", "spiffe://ticketing.local/wallet-svc", true);
    let app = spawn_app_with(|config| config.security = security).await;
    Secure { app, setup }
}

impl Secure {
    /// A client presenting a certificate of `identity` (none: no certificate).
    fn client(&self, identity: Option<&str>) -> WalletServiceClient<Channel> {
        let name = identity.map_or("anonymous".to_owned(), |id| {
            id.rsplit('/').next().unwrap_or("client").to_owned()
        });
        let files = self.setup.client(&name, identity);
        client_over(self.app.addr, &files)
    }
}

fn client_over(addr: std::net::SocketAddr, files: &ClientFiles) -> WalletServiceClient<Channel> {
    WalletServiceClient::new(tls_channel(addr, files))
}

fn charge(user_id: i64, amount: i64, key: &str) -> pb::ChargeRequest {
    pb::ChargeRequest {
        user_id,
        amount,
        idempotency_key: key.to_owned(),
    }
}

fn use_of(user_id: i64, amount: i64, key: &str) -> pb::UseRequest {
    pb::UseRequest {
        user_id,
        amount,
        idempotency_key: key.to_owned(),
        reference: format!("order-{key}"),
    }
}

fn refund_of(user_id: i64, key: &str, use_key: &str) -> pb::RefundRequest {
    pb::RefundRequest {
        user_id,
        idempotency_key: key.to_owned(),
        use_idempotency_key: use_key.to_owned(),
    }
}

#[tokio::test]
async fn without_tls_and_token_settings_the_service_refuses_to_start_and_names_them() {
    let mut config = wallet_svc::config::Config::defaults();
    config.security = shared::security::SecurityArgs {
        insecure: false,
        tls_cert_file: None,
        tls_key_file: None,
        tls_client_ca_file: None,
        auth_jwks_file: None,
        auth_issuer: None,
        auth_audience: None,
        reload_interval: Duration::from_secs(10),
    };
    config.listen_addr = "127.0.0.1:0".parse().expect("address");
    let refused = Application::build(config).await.expect_err("refuses");
    let message = format!("{refused:#}");
    for name in [
        "TLS_CERT_FILE",
        "TLS_KEY_FILE",
        "AUTH_JWKS_FILE",
        "AUTH_ISSUER",
        "AUTH_AUDIENCE",
        "INSECURE=true",
    ] {
        assert!(message.contains(name), "{message}");
    }
}

#[tokio::test]
async fn a_handshake_without_a_trusted_client_certificate_never_reaches_a_handler() {
    let secure = spawn_secure().await;
    let admin = secure.setup.tokens.token(1, &["admin"]);
    // Refused in the handshake: the client sees a transport error (UNAVAILABLE before its
    // handshake ends, UNKNOWN when TLS 1.3 tells it on the first read), never a handler's code.
    let refused_in_handshake = |status: tonic::Status| {
        assert!(
            matches!(status.code(), Code::Unavailable | Code::Unknown)
                && reason(&status).is_empty(),
            "{status:?}"
        );
    };
    let attempt = |mut client: WalletServiceClient<Channel>| {
        let admin = admin.clone();
        async move {
            client
                .charge(with_token(charge(7, 100, "top-up"), &admin))
                .await
        }
    };

    // No client certificate.
    refused_in_handshake(
        attempt(secure.client(None))
            .await
            .expect_err("no certificate"),
    );

    // A certificate of another CA.
    let stranger = TestCa::new("another CA");
    let files = ClientFiles {
        ca: secure.setup.ca_file.clone(),
        identity: Some(
            stranger
                .client(RESERVATION)
                .write(&secure.setup.dir, "stranger"),
        ),
    };
    refused_in_handshake(
        attempt(client_over(secure.app.addr, &files))
            .await
            .expect_err("another CA"),
    );

    // An expired certificate of the right CA.
    let files = ClientFiles {
        ca: secure.setup.ca_file.clone(),
        identity: Some(
            secure
                .setup
                .ca
                .expired_client(RESERVATION)
                .write(&secure.setup.dir, "expired"),
        ),
    };
    refused_in_handshake(
        attempt(client_over(secure.app.addr, &files))
            .await
            .expect_err("expired"),
    );

    // A client that trusts another CA does not accept the server.
    let other_ca = secure.setup.dir.write("other-ca.pem", &stranger.pem());
    let files = ClientFiles {
        ca: other_ca,
        identity: Some(
            secure
                .setup
                .ca
                .client(ADMIN_TOOL)
                .write(&secure.setup.dir, "tool"),
        ),
    };
    refused_in_handshake(
        attempt(client_over(secure.app.addr, &files))
            .await
            .expect_err("untrusted server"),
    );

    assert_eq!(secure.app.rows_written().await, 0);

    // The same call with a trusted certificate goes through.
    attempt(secure.client(Some(ADMIN_TOOL)))
        .await
        .expect("a trusted client");
}

#[tokio::test]
async fn tokens_that_do_not_verify_are_unauthenticated_and_write_nothing() {
    let secure = spawn_secure().await;
    let mut client = secure.client(Some(ADMIN_TOOL));
    let tokens = &secure.setup.tokens;
    let now = unix_now();
    let claims = |change: &dyn Fn(&mut serde_json::Value)| {
        let mut claims = serde_json::json!({
            "iss": ISSUER, "aud": AUDIENCE, "sub": "1", "iat": now, "nbf": now - 60,
            "exp": now + 3600, "roles": ["admin"],
        });
        change(&mut claims);
        tokens.sign(&claims)
    };
    let valid = claims(&|_| {});
    let mut tampered = valid.clone();
    tampered.pop();
    tampered.push(if valid.ends_with('A') { 'B' } else { 'A' });
    let forged = TokenIssuer::ed25519("test-key").token(1, &["admin"]);
    let cases: Vec<(&str, String, &str)> = vec![
        ("tampered", tampered, "TOKEN_INVALID"),
        ("signed by another key", forged, "TOKEN_INVALID"),
        ("not a JWT", "not-a-token".to_owned(), "TOKEN_INVALID"),
        (
            "expired",
            claims(&|c| {
                c["exp"] = (now - 120).into();
                c["nbf"] = (now - 7200).into();
            }),
            "TOKEN_EXPIRED",
        ),
        (
            "not yet valid",
            claims(&|c| c["nbf"] = (now + 600).into()),
            "TOKEN_INVALID",
        ),
        (
            "for another audience",
            claims(&|c| c["aud"] = "another-service".into()),
            "TOKEN_INVALID",
        ),
        (
            "of another issuer",
            claims(&|c| c["iss"] = "https://evil.test".into()),
            "TOKEN_INVALID",
        ),
        (
            "not a user id",
            claims(&|c| c["sub"] = "root".into()),
            "TOKEN_INVALID",
        ),
        (
            "another spelling of a user id",
            claims(&|c| c["sub"] = "01".into()),
            "TOKEN_INVALID",
        ),
    ];
    for (case, token, why) in cases {
        let status = client
            .charge(with_token(charge(7, 100, case), &token))
            .await
            .expect_err(case);
        assert_eq!(status.code(), Code::Unauthenticated, "{case}: {status:?}");
        assert_eq!(reason(&status), why, "{case}");
    }
    let mut no_bearer = tonic::Request::new(charge(7, 100, "basic"));
    no_bearer.metadata_mut().insert(
        "authorization",
        "Basic YWRtaW46YWRtaW4=".parse().expect("ascii"),
    );
    assert_refused(
        client.charge(no_bearer).await,
        Code::Unauthenticated,
        "TOKEN_INVALID",
    );
    let mut twice = with_token(charge(7, 100, "twice"), &valid);
    twice.metadata_mut().append(
        "authorization",
        format!("Bearer {valid}").parse().expect("ascii"),
    );
    assert_refused(
        client.charge(twice).await,
        Code::Unauthenticated,
        "TOKEN_INVALID",
    );
    // No token at all: the certificate names a service, which may not charge.
    assert_refused(
        client.charge(charge(7, 100, "no-token")).await,
        Code::Unauthenticated,
        "TOKEN_MISSING",
    );
    assert_eq!(secure.app.rows_written().await, 0);

    client
        .charge(with_token(charge(7, 100, "valid"), &valid))
        .await
        .expect("the valid token");
}

#[tokio::test]
async fn users_see_only_their_own_wallet_and_only_admins_charge() {
    let secure = spawn_secure().await;
    let mut client = secure.client(Some(ADMIN_TOOL));
    let tokens = &secure.setup.tokens;
    let admin = tokens.token(1, &["admin"]);
    let alice = tokens.token(42, &[]);
    let bob = tokens.token(43, &["reader"]);

    assert_refused(
        client
            .charge(with_token(charge(42, 100, "self-top-up"), &alice))
            .await,
        Code::PermissionDenied,
        "ADMIN_ONLY",
    );
    assert_eq!(secure.app.rows_written().await, 0);
    client
        .charge(with_token(charge(42, 100, "top-up"), &admin))
        .await
        .expect("an admin charges");

    // 0 is the caller; the caller's own id is fine; another's is refused.
    for user_id in [0, 42] {
        let balance = client
            .get_balance(with_token(pb::GetBalanceRequest { user_id }, &alice))
            .await
            .expect("own balance")
            .into_inner();
        assert_eq!((balance.user_id, balance.balance), (42, 100));
    }
    assert_refused(
        client
            .get_balance(with_token(pb::GetBalanceRequest { user_id: 42 }, &bob))
            .await,
        Code::PermissionDenied,
        "OTHER_USER",
    );
    let listing = |user_id| pb::ListTransactionsRequest {
        user_id,
        page_size: 10,
        page_token: String::new(),
    };
    assert_refused(
        client
            .list_transactions(with_token(listing(42), &bob))
            .await,
        Code::PermissionDenied,
        "OTHER_USER",
    );
    let own = client
        .list_transactions(with_token(listing(0), &alice))
        .await
        .expect("own history")
        .into_inner();
    assert_eq!(own.transactions.len(), 1);
    let seen_by_admin = client
        .list_transactions(with_token(listing(42), &admin))
        .await
        .expect("an admin reads anyone's")
        .into_inner();
    assert_eq!(seen_by_admin.transactions.len(), 1);
}

#[tokio::test]
async fn only_a_payment_service_or_an_admin_uses_and_refunds_points() {
    let secure = spawn_secure().await;
    let admin = secure.setup.tokens.token(1, &["admin"]);
    let alice = secure.setup.tokens.token(42, &[]);
    let mut tool = secure.client(Some(ADMIN_TOOL));
    tool.charge(with_token(charge(42, 100, "top-up"), &admin))
        .await
        .expect("charged");
    let written = secure.app.rows_written().await;

    // The user herself, another service, and a certificate-only tool: refused.
    assert_refused(
        tool.r#use(with_token(use_of(42, 30, "self-use"), &alice))
            .await,
        Code::PermissionDenied,
        "PAYMENT_SERVICE_ONLY",
    );
    let mut merch = secure.client(Some(ANOTHER_SERVICE));
    assert_refused(
        merch.r#use(use_of(42, 30, "merch-use")).await,
        Code::PermissionDenied,
        "PAYMENT_SERVICE_ONLY",
    );
    assert_refused(
        tool.r#use(use_of(42, 30, "tool-use")).await,
        Code::PermissionDenied,
        "PAYMENT_SERVICE_ONLY",
    );
    assert_refused(
        merch.refund(refund_of(42, "merch-refund", "top-up")).await,
        Code::PermissionDenied,
        "PAYMENT_SERVICE_ONLY",
    );
    assert_eq!(secure.app.rows_written().await, written);

    // reservation-svc's certificate is a payment service's.
    let mut reservation = secure.client(Some(RESERVATION));
    reservation
        .r#use(use_of(42, 30, "reservation-1"))
        .await
        .expect("reservation-svc uses points");
    assert_eq!(secure.app.ledger(42).await.balance, 70);
}

#[tokio::test]
async fn tokens_of_every_supported_key_type_verify_and_a_new_jwks_takes_over() {
    let secure = spawn_secure().await;
    let mut client = secure.client(Some(ADMIN_TOOL));
    let ec = TokenIssuer::es256("ec-key");
    let rsa = TokenIssuer::rs256("rsa-key");
    let balance = |token: &str| {
        let mut client = client.clone();
        let request = with_token(pb::GetBalanceRequest { user_id: 0 }, token);
        async move { client.get_balance(request).await }
    };

    // Keys not in the JWKS yet.
    let ec_token = ec.token(5, &[]);
    let rsa_token = rsa.token(6, &[]);
    assert_refused(
        balance(&ec_token).await,
        Code::Unauthenticated,
        "TOKEN_INVALID",
    );

    // The JWKS now holds all three, and an encryption key as identity providers publish
    // (skipped); the service reads it again on its own.
    let mut published: serde_json::Value =
        serde_json::from_str(&jwks(&[&secure.setup.tokens, &ec, &rsa])).expect("JSON");
    let mut encryption = published["keys"][2].clone();
    encryption["use"] = "enc".into();
    encryption["alg"] = "RSA-OAEP".into();
    encryption["kid"] = "enc-key".into();
    published["keys"]
        .as_array_mut()
        .expect("keys")
        .push(encryption);
    secure.setup.dir.write("jwks.json", &published.to_string());
    let mut accepted = false;
    for _ in 0..100 {
        if balance(&ec_token).await.is_ok() {
            accepted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(accepted, "the new JWKS was not read");
    assert_eq!(
        balance(&rsa_token)
            .await
            .expect("RS256")
            .into_inner()
            .user_id,
        6
    );
    let ed_token = secure.setup.tokens.token(7, &[]);
    assert_eq!(
        balance(&ed_token)
            .await
            .expect("EdDSA")
            .into_inner()
            .user_id,
        7
    );

    // A key removed from the JWKS stops its tokens, remembered or not.
    secure.setup.dir.write("jwks.json", &jwks(&[&ec]));
    let mut refused = false;
    for _ in 0..100 {
        if balance(&ed_token).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused, "a removed key still verifies");
    assert_refused(
        balance(&rsa_token).await,
        Code::Unauthenticated,
        "TOKEN_INVALID",
    );
    client
        .get_balance(with_token(pb::GetBalanceRequest { user_id: 0 }, &ec_token))
        .await
        .expect("the remaining key");
}

#[tokio::test]
async fn a_rotated_server_certificate_serves_new_connections_while_calls_run() {
    let secure = spawn_secure().await;
    let admin = secure.setup.tokens.token(1, &["admin"]);
    let client = secure.client(Some(ADMIN_TOOL));
    let running = {
        let admin = admin.clone();
        let client = client.clone();
        tokio::spawn(async move {
            for at in 0..200 {
                let mut client = client.clone();
                client
                    .get_balance(with_token(pb::GetBalanceRequest { user_id: 0 }, &admin))
                    .await
                    .unwrap_or_else(|status| panic!("call {at} failed: {status:?}"));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    // A new CA and a new certificate signed by it: new clients must trust the new CA.
    let new_ca = TestCa::new("rotated CA");
    let new_ca_file = secure.setup.dir.write("new-ca.pem", &new_ca.pem());
    let leaf = new_ca.server("spiffe://ticketing.local/wallet-svc");
    let bundle = format!("{}{}", secure.setup.ca.pem(), new_ca.pem());
    // The client CA bundle trusts both while clients move over.
    secure.setup.dir.write("ca.pem", &bundle);
    leaf.write(&secure.setup.dir, "wallet");
    let new_files = ClientFiles {
        ca: new_ca_file,
        identity: Some(
            new_ca
                .client(ADMIN_TOOL)
                .write(&secure.setup.dir, "new-tool"),
        ),
    };
    let mut rotated = false;
    for _ in 0..100 {
        let mut fresh = client_over(secure.app.addr, &new_files);
        if fresh
            .get_balance(with_token(pb::GetBalanceRequest { user_id: 0 }, &admin))
            .await
            .is_ok()
        {
            rotated = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(rotated, "the new certificate was never served");
    running.await.expect("no call failed during the rotation");
}

#[tokio::test]
async fn a_payment_services_keys_written_before_keys_had_owners_are_still_its_own() {
    use diesel_async::RunQueryDsl;
    let secure = spawn_secure().await;
    let admin = secure.setup.tokens.token(1, &["admin"]);
    // A Use made before keys had owners: a bare key, as the earlier schema stored it.
    let request = use_of(42, 30, "legacy-reservation-7-1");
    let movement: wallet_svc::model::MoneyMovement =
        request.clone().try_into().expect("a valid use");
    let mut tool = secure.client(Some(ADMIN_TOOL));
    tool.charge(with_token(charge(42, 100, "top-up"), &admin))
        .await
        .expect("charged");
    let mut conn = secure.app.connect_db().await;
    diesel::sql_query(
        "WITH w AS (UPDATE wallets SET balance = 70 WHERE user_id = 42 RETURNING user_id) \
         INSERT INTO wallet_transactions \
             (user_id, kind, amount, balance_after, idempotency_key, request_hash, reference) \
         SELECT user_id, 'USE', 30, 70, 'legacy-reservation-7-1', $1, 'order-legacy-reservation-7-1' \
         FROM w",
    )
    .bind::<diesel::sql_types::Binary, _>(movement.fingerprint())
    .execute(&mut conn)
    .await
    .expect("a legacy row");

    // reservation-svc's retry of that payment finds it: answered again, no second debit.
    let mut reservation = secure.client(Some(RESERVATION));
    let replayed = reservation
        .r#use(request.clone())
        .await
        .expect("replayed")
        .into_inner();
    assert_eq!(replayed.balance_after, 70);
    assert_eq!(secure.app.ledger(42).await.balance, 70);
    // And its refund gives it back, once.
    reservation
        .refund(refund_of(
            42,
            "legacy-reservation-7-refund",
            "legacy-reservation-7-1",
        ))
        .await
        .expect("refunded");
    assert_eq!(secure.app.ledger(42).await.balance, 100);

    // An admin's keys are the admin's: the same key is a new movement of theirs.
    let applied = tool
        .r#use(with_token(request, &admin))
        .await
        .expect("the admin's own use")
        .into_inner();
    assert_eq!(applied.balance_after, 70);
    secure.app.assert_ledger_matches_balance(42).await;
}

/// What health says of the health name `insecure`, asked over `channel`.
async fn insecure_health(channel: Channel) -> Result<i32, tonic::Status> {
    tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: shared::server::INSECURE.to_owned(),
        })
        .await
        .map(|reply| reply.into_inner().status)
}

#[tokio::test]
async fn an_insecure_server_says_so_in_health_and_a_secure_one_does_not() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let insecure = crate::helpers::spawn_app().await;
    let status = insecure_health(crate::helpers::channel(insecure.addr).await)
        .await
        .expect("reported");
    assert_eq!(status, ServingStatus::Serving as i32);

    let secure = spawn_secure().await;
    let files = secure.setup.client("probe", Some(ADMIN_TOOL));
    let tls = client_tls(&files, None).expect("client TLS");
    let channel = channel(
        &format!("https://localhost:{}", secure.app.addr.port()),
        tls,
        Duration::from_secs(5),
    )
    .expect("a channel");
    // Health and reflection need no token; `insecure` is no name a secure server knows.
    let status = insecure_health(channel).await.expect_err("unknown name");
    assert_eq!(status.code(), Code::NotFound);

    // The health-check subcommand asks over TLS, with the server's own certificate.
    let mut config = wallet_svc::config::Config::defaults();
    config.security = secure
        .setup
        .server("wallet", "spiffe://ticketing.local/wallet-svc", true);
    shared::server::check_health(secure.app.addr, &config.security, "")
        .await
        .expect("the probe passes");
}

#[tokio::test]
async fn wallet_svc_refuses_to_start_without_client_certificates() {
    let setup = SecureSetup::new();
    let mut config = wallet_svc::config::Config::defaults();
    config.listen_addr = "127.0.0.1:0".parse().expect("address");
    config.security = setup.server("wallet", "spiffe://ticketing.local/wallet-svc", false);
    let refused = Application::build(config).await.expect_err("refuses");
    assert!(
        format!("{refused:#}").contains("TLS_CLIENT_CA_FILE"),
        "{refused:#}"
    );
}

#[tokio::test]
async fn connections_that_never_finish_a_handshake_do_not_keep_others_out() {
    let secure = spawn_secure().await;
    let admin = secure.setup.tokens.token(1, &["admin"]);
    // Idle connections, more than a server once ran handshakes at once, that send nothing.
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(
            tokio::net::TcpStream::connect(secure.app.addr)
                .await
                .expect("a connection"),
        );
    }
    let mut client = secure.client(Some(ADMIN_TOOL));
    let answered = tokio::time::timeout(
        Duration::from_secs(4),
        client.get_balance(with_token(pb::GetBalanceRequest { user_id: 0 }, &admin)),
    )
    .await
    .expect("answered while the idle connections wait");
    answered.expect("a balance");
    drop(idle);
}
