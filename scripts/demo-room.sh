#!/usr/bin/env bash
# An on-sale through a waiting room, against a running reservation-svc: makes a concert and a
# schedule, opens a room for it (two buyers called a second, at most ten active, ten seconds to
# claim a turn, two minutes to buy), lets twenty buyers enter, shows the room's counters, and
# follows the last buyer's position until their turn (the first ten are called and never
# claim, so the last waits for their windows to end), then holds a seat with their admission
# token. docker compose runs it as `room-demo` (--profile demo).
#
# Usage: scripts/demo-room.sh [R [PKI]]   (defaults: 127.0.0.1:50051 and .tools/pki, as up.sh
# makes them); needs grpcurl and openssl on the PATH.
set -euo pipefail
R=${1:-127.0.0.1:50051}
PKI=${2:-.tools/pki}
TOKEN_SCRIPT="$(cd "$(dirname "$0")" && pwd)/dev-token.sh"

TLS=(-cacert "$PKI/ca.pem" -cert "$PKI/admin.pem" -key "$PKI/admin-key.pem")
as() { printf 'authorization: Bearer %s' "$("$TOKEN_SCRIPT" "$PKI" "$@")"; }
id_of() { sed -n 's/.*"id": "\([0-9]*\)".*/\1/p' | head -n 1; }
ADMIN=$(as 1 admin)
FIRST=$((RANDOM * 32768 + RANDOM + 1000))

CONCERT=$(grpcurl "${TLS[@]}" -H "$ADMIN" -d '{"title": "Waiting room demo"}' \
    "$R" ticketing.reservation.v1.ReservationService/CreateConcert | id_of)
SCHEDULE=$(grpcurl "${TLS[@]}" -H "$ADMIN" \
    -d "{\"concert_id\": $CONCERT, \"starts_at\": \"2030-03-01T19:00:00Z\", \"seat_count\": 100, \"seat_price\": 0}" \
    "$R" ticketing.reservation.v1.ReservationService/CreateSchedule | id_of)
echo "==> a waiting room for schedule $SCHEDULE"
grpcurl "${TLS[@]}" -H "$ADMIN" \
    -d "{\"schedule_id\": $SCHEDULE, \"rate_per_s\": 2, \"burst\": 1, \"max_active\": 10, \"claim_window\": \"10s\", \"token_ttl\": \"120s\"}" \
    "$R" ticketing.admission.v1.AdmissionService/ConfigureRoom

echo "==> twenty buyers enter"
for i in $(seq 0 19); do
    user=$((FIRST + i))
    grpcurl "${TLS[@]}" -H "$(as "$user")" -d "{\"schedule_id\": $SCHEDULE}" \
        "$R" ticketing.admission.v1.AdmissionService/Enter | tr -d '\n ' | sed 's/$/\n/'
done
LAST=$((FIRST + 19))
grpcurl "${TLS[@]}" -H "$ADMIN" -d "{\"schedule_id\": $SCHEDULE}" \
    "$R" ticketing.admission.v1.AdmissionService/GetRoomStatus

echo "==> the last buyer follows their position to their turn"
grpcurl "${TLS[@]}" -H "$(as "$LAST")" -d "{\"schedule_id\": $SCHEDULE}" \
    "$R" ticketing.admission.v1.AdmissionService/WatchPosition
TOKEN=$(grpcurl "${TLS[@]}" -H "$(as "$LAST")" -d "{\"schedule_id\": $SCHEDULE}" \
    "$R" ticketing.admission.v1.AdmissionService/GetPosition |
    sed -n 's/.*"admissionToken": "\([^"]*\)".*/\1/p')

echo "==> a hold without the admission token, then with it"
grpcurl "${TLS[@]}" -H "$(as "$LAST")" -d "{\"schedule_id\": $SCHEDULE, \"seat_no\": 1}" \
    "$R" ticketing.reservation.v1.ReservationService/HoldSeat || true
grpcurl "${TLS[@]}" -H "$(as "$LAST")" -H "x-admission-token: $TOKEN" \
    -d "{\"schedule_id\": $SCHEDULE, \"seat_no\": 1}" \
    "$R" ticketing.reservation.v1.ReservationService/HoldSeat
