-- Deliveries of an event that found no SMTP session (the server unreachable or refusing it).
-- They are JetStream deliveries like any other, but not the message's fault: the worker takes
-- them off the delivery count when it picks the next delay, so an outage does not use up the
-- retries a later failure of the message itself is owed.
ALTER TABLE reset_requests ADD COLUMN smtp_waits integer NOT NULL DEFAULT 0;
