"""Job lifecycle: the state machine, idempotent creation, queries and dispatch."""
