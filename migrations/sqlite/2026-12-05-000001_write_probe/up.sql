-- /readyz proves the store takes writes by updating this one row.
CREATE TABLE confab_probe (
    id INTEGER PRIMARY KEY NOT NULL,
    at BIGINT NOT NULL
);
