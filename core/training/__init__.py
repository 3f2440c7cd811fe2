"""Training: device choice, model loading, the TRL session, callbacks and the event stream."""
