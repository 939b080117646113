-- Each service owns its database; both live on one server in local setups.
CREATE DATABASE wallet;
CREATE DATABASE reservation;
