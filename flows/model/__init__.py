"""The model wing: a line's StreamingPadim built from params.yaml (build), fitted on its train
role, incrementally where only training images changed (fit, incremental), thresholded on
validation (thresholds, predictions) and evaluated on test (evaluate); one fit's outcome
(trained). No MLflow, no Prefect: it never imports the registry wing or prefect."""
