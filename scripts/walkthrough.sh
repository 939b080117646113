#!/usr/bin/env bash
# Prints the walkthrough of the README's "Try it" for reservation-svc at $1 and wallet-svc at
# $2 (defaults: ./scripts/up.sh's addresses). Every run uses a user and keys of its own and
# takes ids from the replies, so it works as printed on a second run too. up.sh prints it;
# scripts/check-docs.sh checks that the README shows the same.
set -euo pipefail
R=${1:-127.0.0.1:50051}
W=${2:-127.0.0.1:50052}
echo "R=$R W=$W"
cat <<'EOF'
U=$((RANDOM * 32768 + RANDOM + 1000))   # a user of your own, new on every run
grpcurl -plaintext $R list

# The first concert's first schedule, and a free seat of it:
CONCERT=$(grpcurl -plaintext $R ticketing.reservation.v1.ReservationService/ListConcerts | sed -n 's/.*"id": "\([0-9]*\)".*/\1/p' | head -n 1)
SCHEDULE=$(grpcurl -plaintext -d "{\"concert_id\": $CONCERT}" $R ticketing.reservation.v1.ReservationService/ListSchedules | sed -n 's/.*"id": "\([0-9]*\)".*/\1/p' | head -n 1)
SEAT=$(grpcurl -plaintext -d "{\"schedule_id\": $SCHEDULE}" $R ticketing.reservation.v1.ReservationService/ListSeats | grep -B2 SEAT_STATUS_AVAILABLE | sed -n 's/.*"seatNo": \([0-9]*\).*/\1/p' | head -n 1)

# Points for the user, a hold of the seat (another user then gets ALREADY_EXISTS / SEAT_TAKEN),
# its payment, and its cancellation with the points refunded:
grpcurl -plaintext -d "{\"user_id\": $U, \"amount\": 500, \"idempotency_key\": \"top-up-$U\"}" $W ticketing.wallet.v1.WalletService/Charge
RID=$(grpcurl -plaintext -d "{\"user_id\": $U, \"schedule_id\": $SCHEDULE, \"seat_no\": $SEAT}" $R ticketing.reservation.v1.ReservationService/HoldSeat | sed -n 's/.*"id": "\([0-9]*\)".*/\1/p')
grpcurl -plaintext -d "{\"user_id\": $((U + 1)), \"schedule_id\": $SCHEDULE, \"seat_no\": $SEAT}" $R ticketing.reservation.v1.ReservationService/HoldSeat
grpcurl -plaintext -d "{\"reservation_id\": $RID, \"user_id\": $U}" $R ticketing.reservation.v1.ReservationService/PayReservation
grpcurl -plaintext -d "{\"user_id\": $U}" $W ticketing.wallet.v1.WalletService/GetBalance   # 500 less the seat's price
grpcurl -plaintext -d "{\"reservation_id\": $RID, \"user_id\": $U}" $R ticketing.reservation.v1.ReservationService/CancelReservation
grpcurl -plaintext -d "{\"user_id\": $U}" $W ticketing.wallet.v1.WalletService/GetBalance   # 500 again
grpcurl -plaintext -d "{\"user_id\": $U}" $R ticketing.reservation.v1.ReservationService/ListReservations

# The classic hazard: three concurrent uses of 30 points from a balance of 100 leave 10.
V=$((U + 2))
grpcurl -plaintext -d "{\"user_id\": $V, \"amount\": 100, \"idempotency_key\": \"top-up-$V\"}" $W ticketing.wallet.v1.WalletService/Charge
for i in 1 2 3; do grpcurl -plaintext -d "{\"user_id\": $V, \"amount\": 30, \"idempotency_key\": \"use-$V-$i\"}" $W ticketing.wallet.v1.WalletService/Use & done; wait
grpcurl -plaintext -d "{\"user_id\": $V}" $W ticketing.wallet.v1.WalletService/GetBalance   # 10
# A replayed key answers its first outcome; a refund gives a use back, once; the history:
grpcurl -plaintext -d "{\"user_id\": $V, \"amount\": 30, \"idempotency_key\": \"use-$V-1\"}" $W ticketing.wallet.v1.WalletService/Use
grpcurl -plaintext -d "{\"user_id\": $V, \"idempotency_key\": \"refund-$V\", \"use_idempotency_key\": \"use-$V-1\"}" $W ticketing.wallet.v1.WalletService/Refund
grpcurl -plaintext -d "{\"user_id\": $V, \"page_size\": 10}" $W ticketing.wallet.v1.WalletService/ListTransactions

# A new concert and a schedule of it (its seats 1..=seat_count come with it):
NEW=$(grpcurl -plaintext -d '{"title": "Spring tour"}' $R ticketing.reservation.v1.ReservationService/CreateConcert | sed -n 's/.*"id": "\([0-9]*\)".*/\1/p')
grpcurl -plaintext -d "{\"concert_id\": $NEW, \"starts_at\": \"2030-03-01T19:00:00Z\", \"seat_count\": 500, \"seat_price\": 120}" $R ticketing.reservation.v1.ReservationService/CreateSchedule
EOF
