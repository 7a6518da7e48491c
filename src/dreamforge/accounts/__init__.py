"""API keys: who a request acts for, their quotas, and the keyed hashes that identify them."""
