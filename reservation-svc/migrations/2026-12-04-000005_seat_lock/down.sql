DROP FUNCTION seat_lock(bigint, bigint, integer);
