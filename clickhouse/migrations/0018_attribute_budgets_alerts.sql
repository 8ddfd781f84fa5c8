-- Budgets and spike alerts per attribute value (issue "Attribution by any dimension"): a
-- budget may cover the calls whose attribute `attr_key` has the value `attr_value` (e.g.
-- user = u-17), and the alerter judges each value of the keys it is set to watch against
-- that value's own normal hours. An alert names the key and value it is about. Empty
-- strings mean "no attribute", so every budget and alert written before stays as it was.
ALTER TABLE ${database}.budgets${local} ${on_cluster}
    ADD COLUMN IF NOT EXISTS attr_key String DEFAULT '' COMMENT 'Attribute key of an attribute budget (e.g. user), else empty',
    ADD COLUMN IF NOT EXISTS attr_value String DEFAULT '' COMMENT 'The value of attr_key the budget covers, else empty';

-- @cluster-only
ALTER TABLE ${database}.budgets ${on_cluster}
    ADD COLUMN IF NOT EXISTS attr_key String DEFAULT '',
    ADD COLUMN IF NOT EXISTS attr_value String DEFAULT '';

ALTER TABLE ${database}.alerts${local} ${on_cluster}
    ADD COLUMN IF NOT EXISTS attr_key String DEFAULT '' COMMENT 'Attribute key the alert is about (scope attribute: a spike of one value, or its budget), else empty',
    ADD COLUMN IF NOT EXISTS attr_value String DEFAULT '' COMMENT 'The value of attr_key, else empty';

-- @cluster-only
ALTER TABLE ${database}.alerts ${on_cluster}
    ADD COLUMN IF NOT EXISTS attr_key String DEFAULT '',
    ADD COLUMN IF NOT EXISTS attr_value String DEFAULT '';
