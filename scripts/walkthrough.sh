#!/usr/bin/env bash
# Prints the walkthrough of the README's "Try it": `walkthrough.sh [--insecure] [R W PKI]`,
# for reservation-svc at R and wallet-svc at W (defaults: ./scripts/up.sh's addresses) with
# the development certificates and token key of PKI (default .tools/pki, as up.sh makes it;
# give an absolute path for lines that work from any directory). `--insecure` prints the
# plaintext calls of `up.sh --insecure`. Every run uses a user and keys of its own and takes
# ids from the replies, so it works as printed on a second run too. up.sh prints it;
# scripts/check-docs.sh checks that the README shows the same.
set -euo pipefail
insecure=false
if [ "${1:-}" = --insecure ]; then
    insecure=true
    shift
fi
R=${1:-127.0.0.1:50051}
W=${2:-127.0.0.1:50052}
PKI=${3:-.tools/pki}
TOKEN_SCRIPT=scripts/dev-token.sh
[ "${PKI:0:1}" = / ] && TOKEN_SCRIPT="$(cd "$(dirname "$0")" && pwd)/dev-token.sh"

if $insecure; then
    echo "R=$R W=$W"
    echo 'U=$((RANDOM * 32768 + RANDOM + 1000))   # a user of your own, new on every run'
    echo 'TLS=(-plaintext) AS_U=() AS_OTHER=() AS_ADMIN=()   # INSECURE: nobody is checked'
else
    echo "R=$R W=$W PKI=$PKI"
    cat <<EOF
U=\$((RANDOM * 32768 + RANDOM + 1000))   # a user of your own, new on every run
# The operator's client certificate (wallet-svc takes only callers with one), and tokens
# valid for an hour: the user's, another user's, and an admin's.
TLS=(-cacert \$PKI/ca.pem -cert \$PKI/admin.pem -key \$PKI/admin-key.pem)
AS_U=(-H "authorization: Bearer \$($TOKEN_SCRIPT \$PKI \$U)")
AS_OTHER=(-H "authorization: Bearer \$($TOKEN_SCRIPT \$PKI \$((U + 1)))")
AS_ADMIN=(-H "authorization: Bearer \$($TOKEN_SCRIPT \$PKI 1 admin)")
EOF
fi
cat <<'EOF'
grpcurl "${TLS[@]}" $R list

# The first concert's first schedule, and a free seat of it:
CONCERT=$(grpcurl "${TLS[@]}" "${AS_U[@]}" $R ticketing.reservation.v1.ReservationService/ListConcerts | sed -n 's/.*"id": "\([0-9]*\)".*/\1/p' | head -n 1)
SCHEDULE=$(grpcurl "${TLS[@]}" "${AS_U[@]}" -d "{\"concert_id\": $CONCERT}" $R ticketing.reservation.v1.ReservationService/ListSchedules | sed -n 's/.*"id": "\([0-9]*\)".*/\1/p' | head -n 1)
SEAT=$(grpcurl "${TLS[@]}" "${AS_U[@]}" -d "{\"schedule_id\": $SCHEDULE}" $R ticketing.reservation.v1.ReservationService/ListSeats | grep -B2 SEAT_STATUS_AVAILABLE | sed -n 's/.*"seatNo": \([0-9]*\).*/\1/p' | head -n 1)

# Points for the user (a top-up is an admin's call), a hold of the seat (another user then
# gets ALREADY_EXISTS / SEAT_TAKEN), its payment, and its cancellation with the points refunded:
grpcurl "${TLS[@]}" "${AS_ADMIN[@]}" -d "{\"user_id\": $U, \"amount\": 500, \"idempotency_key\": \"top-up-$U\"}" $W ticketing.wallet.v1.WalletService/Charge
RID=$(grpcurl "${TLS[@]}" "${AS_U[@]}" -d "{\"user_id\": $U, \"schedule_id\": $SCHEDULE, \"seat_no\": $SEAT}" $R ticketing.reservation.v1.ReservationService/HoldSeat | sed -n 's/.*"id": "\([0-9]*\)".*/\1/p')
grpcurl "${TLS[@]}" "${AS_OTHER[@]}" -d "{\"user_id\": $((U + 1)), \"schedule_id\": $SCHEDULE, \"seat_no\": $SEAT}" $R ticketing.reservation.v1.ReservationService/HoldSeat
grpcurl "${TLS[@]}" "${AS_U[@]}" -d "{\"reservation_id\": $RID, \"user_id\": $U}" $R ticketing.reservation.v1.ReservationService/PayReservation
grpcurl "${TLS[@]}" "${AS_U[@]}" -d "{\"user_id\": $U}" $W ticketing.wallet.v1.WalletService/GetBalance   # 500 less the seat's price
grpcurl "${TLS[@]}" "${AS_U[@]}" -d "{\"reservation_id\": $RID, \"user_id\": $U}" $R ticketing.reservation.v1.ReservationService/CancelReservation
grpcurl "${TLS[@]}" "${AS_U[@]}" -d "{\"user_id\": $U}" $W ticketing.wallet.v1.WalletService/GetBalance   # 500 again
grpcurl "${TLS[@]}" "${AS_U[@]}" -d "{\"user_id\": $U}" $R ticketing.reservation.v1.ReservationService/ListReservations

# The classic hazard: three concurrent uses of 30 points from a balance of 100 leave 10
# (a Use is a payment service's or an admin's call).
V=$((U + 2))
grpcurl "${TLS[@]}" "${AS_ADMIN[@]}" -d "{\"user_id\": $V, \"amount\": 100, \"idempotency_key\": \"top-up-$V\"}" $W ticketing.wallet.v1.WalletService/Charge
for i in 1 2 3; do grpcurl "${TLS[@]}" "${AS_ADMIN[@]}" -d "{\"user_id\": $V, \"amount\": 30, \"idempotency_key\": \"use-$V-$i\"}" $W ticketing.wallet.v1.WalletService/Use & done; wait
grpcurl "${TLS[@]}" "${AS_ADMIN[@]}" -d "{\"user_id\": $V}" $W ticketing.wallet.v1.WalletService/GetBalance   # 10
# A replayed key answers its first outcome; a refund gives a use back, once; the history:
grpcurl "${TLS[@]}" "${AS_ADMIN[@]}" -d "{\"user_id\": $V, \"amount\": 30, \"idempotency_key\": \"use-$V-1\"}" $W ticketing.wallet.v1.WalletService/Use
grpcurl "${TLS[@]}" "${AS_ADMIN[@]}" -d "{\"user_id\": $V, \"idempotency_key\": \"refund-$V\", \"use_idempotency_key\": \"use-$V-1\"}" $W ticketing.wallet.v1.WalletService/Refund
grpcurl "${TLS[@]}" "${AS_ADMIN[@]}" -d "{\"user_id\": $V, \"page_size\": 10}" $W ticketing.wallet.v1.WalletService/ListTransactions

# A new concert and a schedule of it (its seats 1..=seat_count come with it), an admin's calls:
NEW=$(grpcurl "${TLS[@]}" "${AS_ADMIN[@]}" -d '{"title": "Spring tour"}' $R ticketing.reservation.v1.ReservationService/CreateConcert | sed -n 's/.*"id": "\([0-9]*\)".*/\1/p')
ONSALE=$(grpcurl "${TLS[@]}" "${AS_ADMIN[@]}" -d "{\"concert_id\": $NEW, \"starts_at\": \"2030-03-01T19:00:00Z\", \"seat_count\": 500, \"seat_price\": 120}" $R ticketing.reservation.v1.ReservationService/CreateSchedule | sed -n 's/.*"id": "\([0-9]*\)".*/\1/p')

# Its on-sale through a waiting room (an admin's call): two buyers called a second, at most 100
# active, a minute to claim a turn, ten minutes to buy, open now. A buyer takes a number, follows
# it to the turn, and holds with the admission token the turn gives (without it: FAILED_PRECONDITION
# / ADMISSION_REQUIRED):
grpcurl "${TLS[@]}" "${AS_ADMIN[@]}" -d "{\"schedule_id\": $ONSALE, \"rate_per_s\": 2, \"burst\": 1, \"max_active\": 100, \"claim_window\": \"60s\", \"token_ttl\": \"600s\"}" $R ticketing.admission.v1.AdmissionService/ConfigureRoom
grpcurl "${TLS[@]}" "${AS_U[@]}" -d "{\"user_id\": $U, \"schedule_id\": $ONSALE}" $R ticketing.admission.v1.AdmissionService/Enter
grpcurl "${TLS[@]}" "${AS_U[@]}" -d "{\"user_id\": $U, \"schedule_id\": $ONSALE}" $R ticketing.admission.v1.AdmissionService/WatchPosition   # ends at ADMITTED
grpcurl "${TLS[@]}" "${AS_U[@]}" -d "{\"user_id\": $U, \"schedule_id\": $ONSALE, \"seat_no\": 1}" $R ticketing.reservation.v1.ReservationService/HoldSeat
ADMISSION=$(grpcurl "${TLS[@]}" "${AS_U[@]}" -d "{\"user_id\": $U, \"schedule_id\": $ONSALE}" $R ticketing.admission.v1.AdmissionService/GetPosition | sed -n 's/.*"admissionToken": "\([^"]*\)".*/\1/p')
grpcurl "${TLS[@]}" "${AS_U[@]}" -H "x-admission-token: $ADMISSION" -d "{\"user_id\": $U, \"schedule_id\": $ONSALE, \"seat_no\": 1}" $R ticketing.reservation.v1.ReservationService/HoldSeat
grpcurl "${TLS[@]}" "${AS_ADMIN[@]}" -d "{\"schedule_id\": $ONSALE}" $R ticketing.admission.v1.AdmissionService/GetRoomStatus
EOF
