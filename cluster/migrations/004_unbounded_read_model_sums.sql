-- Read-model columns that cannot overflow in a realistic lifetime (issue 8): a value the API accepted must never make
-- a commit fail for a data reason later.
--
-- user_totals.total_amount was numeric(24, 6): below 1e18. Each transaction adds less than 1e12 (the schema's
-- 18 digits with 6 decimals) times the largest ratio of two configured rates (189.6 with the default table and a JPY
-- base), so a few thousand maximal transactions of one user overflowed it. Unconstrained numeric holds up to
-- 131,072 digits before the decimal point; its scale stays 6 because every amount added is quantised to 6 decimals.
-- Relaxing a numeric's precision needs no table rewrite.
ALTER TABLE user_totals ALTER COLUMN total_amount TYPE numeric;

-- device_stats is left as it is, on this argument:
--  * every reading is refused at validation unless it lies in its unit's physical range (pipelines/units.py), and
--    the sensor handler refuses any SI value that is not finite, so every value written has |v| <= 1e9;
--  * reading_min and reading_max each hold one such value;
--  * reading_sum after n readings has |sum| <= n * 1e9; double precision overflows above 1.8e308, i.e. after 1.8e299
--    readings. A device sending 10,000 readings a second for 1,000 years sends 3.2e14 (sum <= 3.2e23). A float sum
--    loses precision (about 15 significant digits), never range;
--  * the bigint counters (reading_count, out_of_range_count, and tx_count, flagged_count, user_action_counts.count)
--    reach 9.2e18 after 29 million years at 10,000 increments a second.
COMMENT ON COLUMN user_totals.total_amount IS
    'sum of base-currency amounts, each quantised to 6 decimals; unconstrained numeric so it cannot overflow';
COMMENT ON COLUMN device_stats.reading_sum IS
    'sum of SI values, each |v| <= 1e9 (physical ranges checked at validation): finite for 1.8e299 readings';
