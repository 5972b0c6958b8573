"""Workers not tied to hardware: prepare, PKI, notify, the outbox relay and reconciler."""
