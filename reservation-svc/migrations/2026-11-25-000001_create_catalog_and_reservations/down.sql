DROP TABLE reservations;
DROP TABLE seats;
DROP TABLE schedules;
DROP TABLE concerts;
