//! reservation-svc as production runs it: TLS to its callers, verified tokens, mutual TLS to a
//! wallet-svc that checks reservation-svc's certificate. Certificates and tokens are real, made
//! by the test (shared::test_pki); every refusal is checked for its code, its reason, and for
//! having written nothing.

use std::net::SocketAddr;

use shared::proto::reservation::v1 as pb;
use shared::proto::wallet::v1 as wallet_pb;
use shared::proto::wallet::v1::wallet_service_client::WalletServiceClient;
use shared::service::Service as _;
use shared::test_pki::{SecureSetup, assert_refused, tls_channel, with_token};
use shared::test_support::TestDatabase;
use shared::tls::ClientFiles;
use tonic::Code;
use tonic::transport::Channel;

use shared::proto::admission::v1 as adm;
use shared::proto::admission::v1::admission_service_client::AdmissionServiceClient;

use crate::helpers::{Client, reason, start, test_config};

const RESERVATION: &str = "spiffe://ticketing.local/reservation-svc";
const WALLET: &str = "spiffe://ticketing.local/wallet-svc";
const ADMIN_TOOL: &str = "spiffe://ticketing.local/admin";

/// Both services, secure: reservation-svc serves TLS, wallet-svc mutual TLS, and
/// reservation-svc calls the wallet with its own certificate.
struct System {
    setup: SecureSetup,
    reservation: SocketAddr,
    wallet: SocketAddr,
    db: TestDatabase,
    _wallet_db: TestDatabase,
    _stops: Vec<tokio::sync::oneshot::Sender<()>>,
}

async fn start_system() -> System {
    let setup = SecureSetup::new();
    let mut wallet_config = wallet_svc::config::Config::defaults();
    wallet_config.security = setup.server("wallet", WALLET, true);
    let (wallet, wallet_stop, wallet_db) = start_wallet(wallet_config).await;
    let db = reservation_database().await;
    let mut config = test_config(&db);
    config.security = setup.server("reservation", RESERVATION, false);
    let client_files = setup.client("reservation-client", Some(RESERVATION));
    config.wallet_endpoint = format!("https://localhost:{}", wallet.port());
    config.wallet_tls_ca_file = Some(client_files.ca.clone());
    let (cert, key) = client_files.identity.expect("an identity");
    config.wallet_tls_cert_file = Some(cert);
    config.wallet_tls_key_file = Some(key);
    config.admission_token_keys_file = Some(crate::admission::keys_file());
    let (reservation, reservation_stop, _) = start(config).await;
    System {
        setup,
        reservation,
        wallet,
        db,
        _wallet_db: wallet_db,
        _stops: vec![wallet_stop, reservation_stop],
    }
}

/// Starts wallet-svc with `config` (its security, say) on a free port and a database of its
/// own; it runs until the sender is dropped or fired.
async fn start_wallet(
    mut config: wallet_svc::config::Config,
) -> (SocketAddr, tokio::sync::oneshot::Sender<()>, TestDatabase) {
    let db = TestDatabase::create(
        "wallet",
        wallet_svc::startup::MIGRATIONS,
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../wallet-svc/migrations"),
    )
    .await;
    config.listen_addr = "127.0.0.1:0".parse().expect("address");
    config.database_url = db.url().into();
    config.metrics_addr = None;
    let app = wallet_svc::startup::Application::build(config)
        .await
        .expect("build wallet-svc");
    let addr = app.local_addr().expect("bound");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    (addr, stop, db)
}

async fn reservation_database() -> TestDatabase {
    TestDatabase::create(
        "reservation",
        reservation_svc::startup::MIGRATIONS,
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations"),
    )
    .await
}

/// A hold of `seat_no` by the bearer of `token`, for the caller (`user_id` 0).
fn hold_as(token: &str, schedule_id: i64, seat_no: i32) -> tonic::Request<pb::HoldSeatRequest> {
    with_token(
        pb::HoldSeatRequest {
            user_id: 0,
            schedule_id,
            seat_no,
        },
        token,
    )
}

/// A charge of `amount` points to `user_id` by the admin of `admin`.
fn top_up(
    admin: &str,
    user_id: i64,
    amount: i64,
    key: &str,
) -> tonic::Request<wallet_pb::ChargeRequest> {
    with_token(
        wallet_pb::ChargeRequest {
            user_id,
            amount,
            idempotency_key: key.to_owned(),
        },
        admin,
    )
}

impl System {
    fn files(&self, identity: Option<&str>) -> ClientFiles {
        self.setup.client("tool", identity)
    }

    fn reservations(&self) -> Client {
        Client::new(tls_channel(self.reservation, &self.files(None)))
    }

    fn rooms(&self) -> AdmissionServiceClient<Channel> {
        AdmissionServiceClient::new(tls_channel(self.reservation, &self.files(None)))
    }

    fn wallet(&self) -> WalletServiceClient<Channel> {
        WalletServiceClient::new(tls_channel(self.wallet, &self.files(Some(ADMIN_TOOL))))
    }

    fn token(&self, user_id: i64) -> String {
        self.setup.tokens.token(user_id, &[])
    }

    fn admin(&self) -> String {
        self.setup.tokens.token(1, &["admin"])
    }

    async fn count(&self, table: &str) -> i64 {
        use diesel::QueryableByName;
        use diesel_async::{AsyncConnection, RunQueryDsl};
        #[derive(QueryableByName)]
        struct Count {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let mut conn = diesel_async::AsyncPgConnection::establish(self.db.url())
            .await
            .expect("connect");
        diesel::sql_query(format!("SELECT count(*) AS n FROM {table}"))
            .get_result::<Count>(&mut conn)
            .await
            .expect("count")
            .n
    }

    /// A schedule of `seats` seats at 100 points, made by an admin.
    async fn schedule(&self, seats: i32) -> i64 {
        let mut client = self.reservations();
        let concert = client
            .create_concert(with_token(
                pb::CreateConcertRequest {
                    title: "Secure tour".to_owned(),
                },
                &self.admin(),
            ))
            .await
            .expect("an admin creates a concert")
            .into_inner();
        client
            .create_schedule(with_token(
                pb::CreateScheduleRequest {
                    concert_id: concert.id,
                    starts_at: Some(prost_types::Timestamp {
                        seconds: shared::test_pki::unix_now() + 30 * 86_400,
                        nanos: 0,
                    }),
                    seat_count: seats,
                    seat_price: 100,
                },
                &self.admin(),
            ))
            .await
            .expect("an admin creates a schedule")
            .into_inner()
            .id
    }
}

#[tokio::test]
async fn only_admins_create_concerts_and_schedules() {
    let system = start_system().await;
    let mut client = system.reservations();
    let user = system.token(42);
    assert_refused(
        client
            .create_concert(with_token(
                pb::CreateConcertRequest {
                    title: "Mine".to_owned(),
                },
                &user,
            ))
            .await,
        Code::PermissionDenied,
        "ADMIN_ONLY",
    );
    assert_refused(
        client
            .create_concert(pb::CreateConcertRequest {
                title: "Anonymous".to_owned(),
            })
            .await,
        Code::Unauthenticated,
        "TOKEN_MISSING",
    );
    let schedule = system.schedule(3).await;
    let schedules_before = system.count("schedules").await;
    assert_refused(
        client
            .create_schedule(with_token(
                pb::CreateScheduleRequest {
                    concert_id: 1,
                    starts_at: Some(prost_types::Timestamp {
                        seconds: shared::test_pki::unix_now() + 86_400,
                        nanos: 0,
                    }),
                    seat_count: 100_000,
                    seat_price: 1,
                },
                &user,
            ))
            .await,
        Code::PermissionDenied,
        "ADMIN_ONLY",
    );
    assert_eq!(system.count("concerts").await, 1);
    assert_eq!(system.count("schedules").await, schedules_before);
    // Anyone with a token reads the catalogue.
    let seats = client
        .list_seats(with_token(
            pb::ListSeatsRequest {
                schedule_id: schedule,
                ..Default::default()
            },
            &user,
        ))
        .await
        .expect("a user lists seats")
        .into_inner();
    assert_eq!(seats.seats.len(), 3);
}

#[tokio::test]
async fn a_reservation_is_its_owners_and_a_payment_crosses_mutual_tls() {
    let system = start_system().await;
    let schedule = system.schedule(2).await;
    let mut client = system.reservations();
    let alice = system.token(42);
    let bob = system.token(43);
    system
        .wallet()
        .charge(top_up(&system.admin(), 42, 500, "top-up-42"))
        .await
        .expect("an admin tops alice up");

    // Alice holds as herself (0 is the caller); Bob may not hold in her name.
    let held = client
        .hold_seat(hold_as(&alice, schedule, 1))
        .await
        .expect("alice holds")
        .into_inner();
    assert_eq!(held.user_id, 42);
    assert_refused(
        client
            .hold_seat(with_token(
                pb::HoldSeatRequest {
                    user_id: 42,
                    schedule_id: schedule,
                    seat_no: 2,
                },
                &bob,
            ))
            .await,
        Code::PermissionDenied,
        "OTHER_USER",
    );

    // Bob can neither see, pay nor cancel it: to him it does not exist.
    let get = |token: &str| {
        with_token(
            pb::GetReservationRequest {
                reservation_id: held.id,
            },
            token,
        )
    };
    let status = client.get_reservation(get(&bob)).await.expect_err("hidden");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let status = client
        .pay_reservation(with_token(
            pb::PayReservationRequest {
                reservation_id: held.id,
                user_id: 0,
            },
            &bob,
        ))
        .await
        .expect_err("not bob's");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_refused(
        client
            .pay_reservation(with_token(
                pb::PayReservationRequest {
                    reservation_id: held.id,
                    user_id: 42,
                },
                &bob,
            ))
            .await,
        Code::PermissionDenied,
        "OTHER_USER",
    );
    assert_refused(
        client
            .cancel_reservation(with_token(
                pb::CancelReservationRequest {
                    reservation_id: held.id,
                    user_id: 42,
                },
                &bob,
            ))
            .await,
        Code::PermissionDenied,
        "OTHER_USER",
    );
    assert_refused(
        client
            .list_reservations(with_token(
                pb::ListReservationsRequest {
                    user_id: 42,
                    page_size: 10,
                    page_token: String::new(),
                },
                &bob,
            ))
            .await,
        Code::PermissionDenied,
        "OTHER_USER",
    );
    let bobs = client
        .list_reservations(with_token(
            pb::ListReservationsRequest {
                user_id: 0,
                page_size: 10,
                page_token: String::new(),
            },
            &bob,
        ))
        .await
        .expect("bob's own list")
        .into_inner();
    assert!(bobs.reservations.is_empty());
    assert_eq!(system.count("reservations").await, 1);

    // Alice pays: reservation-svc's certificate is what the wallet accepts.
    let paid = client
        .pay_reservation(with_token(
            pb::PayReservationRequest {
                reservation_id: held.id,
                user_id: 0,
            },
            &alice,
        ))
        .await
        .expect("alice pays")
        .into_inner();
    assert_eq!(paid.status(), pb::ReservationStatus::Confirmed);
    let balance = system
        .wallet()
        .get_balance(with_token(
            wallet_pb::GetBalanceRequest { user_id: 0 },
            &alice,
        ))
        .await
        .expect("alice's balance")
        .into_inner();
    assert_eq!(balance.balance, 400);

    // An admin sees anyone's.
    let seen = client
        .get_reservation(get(&system.admin()))
        .await
        .expect("an admin reads it")
        .into_inner();
    assert_eq!(seen.status(), pb::ReservationStatus::Confirmed);
}

/// The flags that set the variables of an env file written by `scripts/dev-pki.sh`, found by
/// the variables the CLI reads (the tests share one process environment, so it stays as is).
fn flags_of(command: clap::Command, env_file: &std::path::Path) -> Vec<String> {
    let text = std::fs::read_to_string(env_file).expect("an env file");
    let mut flags = Vec::new();
    for line in text
        .lines()
        .filter(|line| !line.starts_with('#') && line.contains('='))
    {
        let (variable, value) = line.split_once('=').expect("KEY=VALUE");
        let argument = command
            .get_arguments()
            .find(|argument| argument.get_env().is_some_and(|env| env == variable))
            .unwrap_or_else(|| panic!("{variable} is no setting of {}", command.get_name()));
        flags.push(format!(
            "--{}={value}",
            argument.get_long().expect("a flag")
        ));
    }
    flags
}

fn script(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scripts")
        .join(name)
}

#[tokio::test]
async fn the_development_pki_and_tokens_run_both_services_securely() {
    use clap::{CommandFactory, Parser};
    let dir = shared::test_pki::PkiDir::new();
    let made = std::process::Command::new(script("dev-pki.sh"))
        .arg(dir.path())
        .output()
        .expect("dev-pki.sh runs");
    assert!(made.status.success(), "dev-pki.sh: {made:?}");

    let mut wallet_args = vec!["wallet-svc".to_owned()];
    wallet_args.extend(flags_of(
        wallet_svc::config::Cli::command(),
        &dir.path().join("wallet.env"),
    ));
    let wallet_config = wallet_svc::config::Cli::try_parse_from(&wallet_args)
        .expect("wallet.env parses")
        .config;
    assert!(!wallet_config.security.insecure);
    let (wallet, _wallet_stop, _wallet_db) = start_wallet(wallet_config).await;
    let db = reservation_database().await;
    let mut args = vec!["reservation-svc".to_owned()];
    args.extend(flags_of(
        reservation_svc::config::Cli::command(),
        &dir.path().join("reservation.env"),
    ));
    let parsed = reservation_svc::config::Cli::try_parse_from(&args)
        .expect("reservation.env parses")
        .config;
    let mut config = test_config(&db);
    config.security = parsed.security;
    config.wallet_tls_ca_file = parsed.wallet_tls_ca_file;
    config.wallet_tls_cert_file = parsed.wallet_tls_cert_file;
    config.wallet_tls_key_file = parsed.wallet_tls_key_file;
    assert!(parsed.wallet_endpoint.starts_with("https://localhost:"));
    config.wallet_endpoint = format!("https://localhost:{}", wallet.port());
    let (reservation, _reservation_stop, _) = start(config).await;

    let token = |user: &str, role: Option<&str>| {
        let made = std::process::Command::new(script("dev-token.sh"))
            .arg(dir.path())
            .arg(user)
            .args(role)
            .output()
            .expect("dev-token.sh runs");
        assert!(made.status.success(), "dev-token.sh: {made:?}");
        String::from_utf8(made.stdout)
            .expect("text")
            .trim()
            .to_owned()
    };
    let admin = token("1", Some("admin"));
    let user = token("42", None);
    let files = |identity: Option<&str>| ClientFiles {
        ca: dir.path().join("ca.pem"),
        identity: identity.map(|name| {
            (
                dir.path().join(format!("{name}.pem")),
                dir.path().join(format!("{name}-key.pem")),
            )
        }),
    };
    let mut wallet_client = WalletServiceClient::new(tls_channel(wallet, &files(Some("admin"))));
    wallet_client
        .charge(top_up(&admin, 42, 300, "dev-top-up"))
        .await
        .expect("the admin certificate and token charge");
    let mut client = Client::new(tls_channel(reservation, &files(None)));
    let concert = client
        .create_concert(with_token(
            pb::CreateConcertRequest {
                title: "Dev".to_owned(),
            },
            &admin,
        ))
        .await
        .expect("concert")
        .into_inner();
    let schedule = client
        .create_schedule(with_token(
            pb::CreateScheduleRequest {
                concert_id: concert.id,
                starts_at: Some(prost_types::Timestamp {
                    seconds: shared::test_pki::unix_now() + 86_400,
                    nanos: 0,
                }),
                seat_count: 1,
                seat_price: 100,
            },
            &admin,
        ))
        .await
        .expect("schedule")
        .into_inner();
    let held = client
        .hold_seat(hold_as(&user, schedule.id, 1))
        .await
        .expect("hold")
        .into_inner();
    let paid = client
        .pay_reservation(with_token(
            pb::PayReservationRequest {
                reservation_id: held.id,
                user_id: 0,
            },
            &user,
        ))
        .await
        .expect("pay, over mutual TLS to the wallet")
        .into_inner();
    assert_eq!(paid.status(), pb::ReservationStatus::Confirmed);
}

#[tokio::test]
async fn nobody_but_reservation_svc_pre_empts_or_refunds_a_reservations_payment() {
    let system = start_system().await;
    let schedule = system.schedule(2).await;
    let mut client = system.reservations();
    let mut wallet = system.wallet();
    let alice = system.token(42);
    let bob = system.token(43);
    let admin = system.admin();
    wallet
        .charge(top_up(&admin, 42, 500, "top-up-42"))
        .await
        .expect("charged");
    let held = client
        .hold_seat(hold_as(&alice, schedule, 1))
        .await
        .expect("alice holds")
        .into_inner();
    let nonce = {
        use diesel_async::AsyncConnection;
        let mut conn = diesel_async::AsyncPgConnection::establish(system.db.url())
            .await
            .expect("connect");
        crate::helpers::key_nonce(&mut conn, held.id)
            .await
            .unwrap_or_default()
    };
    let use_key = protocol::payment::use_key(&nonce, held.id, 1);
    let refund_key = protocol::payment::refund_key(&nonce, held.id);
    let debit = |key: &str| wallet_pb::UseRequest {
        user_id: 42,
        amount: 100,
        idempotency_key: key.to_owned(),
        reference: "pre-empted".to_owned(),
    };
    let refund = wallet_pb::RefundRequest {
        user_id: 42,
        idempotency_key: refund_key.clone(),
        use_idempotency_key: use_key.clone(),
    };
    let balance = |mut wallet: WalletServiceClient<Channel>, token: String| async move {
        wallet
            .get_balance(with_token(
                wallet_pb::GetBalanceRequest { user_id: 42 },
                &token,
            ))
            .await
            .expect("balance")
            .into_inner()
            .balance
    };
    let mut merch = WalletServiceClient::new(tls_channel(
        system.wallet,
        &system
            .setup
            .client("merch", Some("spiffe://ticketing.local/merch-svc")),
    ));

    // Before the owner pays: another user or service cannot send the payment's Use.
    assert_refused(
        wallet.r#use(with_token(debit(&use_key), &bob)).await,
        Code::PermissionDenied,
        "PAYMENT_SERVICE_ONLY",
    );
    assert_refused(
        merch.r#use(debit(&use_key)).await,
        Code::PermissionDenied,
        "PAYMENT_SERVICE_ONLY",
    );
    // An admin can, but under the admin's own keys: an unrelated movement, and a refund under
    // the reservation's refund key finds no Use of the admin's to give back.
    let refused = wallet
        .refund(with_token(refund.clone(), &admin))
        .await
        .expect_err("no such use among the admin's keys");
    assert_eq!(refused.code(), Code::NotFound, "{refused:?}");
    assert_eq!(reason(&refused), "UNKNOWN_USE");
    wallet
        .r#use(with_token(debit(&use_key), &admin))
        .await
        .expect("the admin's own movement");
    assert_eq!(balance(wallet.clone(), admin.clone()).await, 400);

    // The owner's payment is its own debit, under reservation-svc's keys.
    let paid = client
        .pay_reservation(with_token(
            pb::PayReservationRequest {
                reservation_id: held.id,
                user_id: 0,
            },
            &alice,
        ))
        .await
        .expect("alice pays")
        .into_inner();
    assert_eq!(paid.status(), pb::ReservationStatus::Confirmed);
    assert_eq!(balance(wallet.clone(), admin.clone()).await, 300);

    // After it: nobody but reservation-svc refunds it (no free ticket).
    assert_refused(
        wallet.refund(with_token(refund.clone(), &bob)).await,
        Code::PermissionDenied,
        "PAYMENT_SERVICE_ONLY",
    );
    assert_refused(
        merch.refund(refund.clone()).await,
        Code::PermissionDenied,
        "PAYMENT_SERVICE_ONLY",
    );
    // The admin's refund under those keys gives back the admin's own movement, not the
    // reservation's debit.
    wallet
        .refund(with_token(refund.clone(), &admin))
        .await
        .expect("the admin refunds the admin's own use");
    assert_eq!(balance(wallet.clone(), admin.clone()).await, 400);
    let replayed = wallet
        .refund(with_token(refund.clone(), &admin))
        .await
        .expect("replayed")
        .into_inner();
    assert_eq!(replayed.balance_after, 400);
    let seen = client
        .get_reservation(with_token(
            pb::GetReservationRequest {
                reservation_id: held.id,
            },
            &alice,
        ))
        .await
        .expect("alice reads it")
        .into_inner();
    assert_eq!(seen.status(), pb::ReservationStatus::Confirmed);

    // The owner's cancellation refunds the reservation's debit, exactly once.
    let cancelled = client
        .cancel_reservation(with_token(
            pb::CancelReservationRequest {
                reservation_id: held.id,
                user_id: 0,
            },
            &alice,
        ))
        .await
        .expect("alice cancels")
        .into_inner();
    assert_eq!(cancelled.status(), pb::ReservationStatus::Cancelled);
    assert_eq!(balance(wallet.clone(), admin.clone()).await, 500);
}

#[tokio::test]
async fn a_waiting_room_knows_its_users_by_their_tokens_and_only_admins_configure_it() {
    let system = start_system().await;
    let schedule = system.schedule(3).await;
    let mut rooms = system.rooms();
    let settings = crate::admission::room(schedule, 100.0, 10);
    assert_refused(
        rooms
            .configure_room(with_token(settings, &system.token(42)))
            .await,
        Code::PermissionDenied,
        "ADMIN_ONLY",
    );
    assert_refused(
        rooms.configure_room(settings).await,
        Code::Unauthenticated,
        "TOKEN_MISSING",
    );
    assert_eq!(system.count("waiting_rooms").await, 0);
    rooms
        .configure_room(with_token(settings, &system.admin()))
        .await
        .expect("an admin configures the room");
    assert_refused(
        rooms
            .get_room_status(with_token(
                adm::GetRoomStatusRequest {
                    schedule_id: schedule,
                },
                &system.token(42),
            ))
            .await,
        Code::PermissionDenied,
        "ADMIN_ONLY",
    );

    // The user is the token's: user_id 0 is the caller, another user's id is refused.
    let enter = |user_id: i64, token: &str| {
        with_token(
            adm::EnterRequest {
                schedule_id: schedule,
                user_id,
            },
            token,
        )
    };
    let ticket = rooms
        .enter(enter(0, &system.token(42)))
        .await
        .expect("enter as oneself")
        .into_inner();
    assert_eq!((ticket.user_id, ticket.number), (42, 1));
    assert_refused(
        rooms.enter(enter(43, &system.token(42))).await,
        Code::PermissionDenied,
        "OTHER_USER",
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let admitted = loop {
        let ticket = rooms
            .get_position(with_token(
                adm::GetPositionRequest {
                    schedule_id: schedule,
                    user_id: 0,
                },
                &system.token(42),
            ))
            .await
            .expect("position")
            .into_inner();
        if ticket.state() == adm::TicketState::Admitted {
            break ticket;
        }
        assert!(std::time::Instant::now() < deadline, "never admitted");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };

    // The admission token is the user's own: another user's bearer token does not go with it.
    let with_admission = |token: &str| {
        let mut request = hold_as(token, schedule, 1);
        request.metadata_mut().insert(
            "x-admission-token",
            admitted.admission_token.parse().expect("metadata"),
        );
        request
    };
    let mut client = system.reservations();
    assert_refused(
        client.hold_seat(with_admission(&system.token(43))).await,
        Code::PermissionDenied,
        "ADMISSION_INVALID",
    );
    assert_eq!(system.count("reservations").await, 0);
    client
        .hold_seat(with_admission(&system.token(42)))
        .await
        .expect("the admitted user holds");
}
