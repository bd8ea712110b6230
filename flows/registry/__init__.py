"""The registry wing: MLflow as the record of models and decisions (registry), the gates that
decide (pure, with reasons), the audit trail, the per-line lock, lineage (commit, dirty tree, data
on the DVC remote) and the pyfunc every registered version loads with."""
