DROP FUNCTION seat_lock(bigint);
