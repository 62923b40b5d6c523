"""`segcli plan`: measure a dataset (fingerprint), decide an experiment from it (rules, budget), write it."""
