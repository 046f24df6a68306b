-- Records a batch of emails as sent. One primary-key update per event: a single
-- `WHERE event_id = ANY(...)` lets the planner pick a sequential scan of the whole table
-- when its statistics are stale, which under load they always are.
CREATE OR REPLACE FUNCTION reset_mark_sent(p_event_ids uuid[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_event_id uuid;
BEGIN
    FOREACH v_event_id IN ARRAY p_event_ids LOOP
        UPDATE reset_requests
           SET outcome = 'sent', sent_at = now(), last_error = NULL, updated_at = now()
         WHERE event_id = v_event_id;
    END LOOP;
END
$$;
