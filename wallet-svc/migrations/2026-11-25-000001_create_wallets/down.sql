DROP TABLE wallet_refusals;
DROP TABLE wallet_transactions;
DROP TABLE wallets;
