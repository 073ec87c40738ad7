DROP TABLE confab_probe;
