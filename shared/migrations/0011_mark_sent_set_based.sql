-- Records a batch of emails as sent with one statement instead of one per event. Each
-- UPDATE of 0006's loop started an executor of its own and prepared the table's CHECK
-- constraints anew, which under load was a good part of what marking a mail sent cost.
-- Sequential scans stay priced out (0006's reason: with statistics gone stale under load,
-- the planner would otherwise read the whole table to find a batch of rows by key), and
-- the plan is made once, as in 0009. `= ANY` rather than a join with the array: a join
-- planned while the table was small read its whole primary key once it had grown.
CREATE OR REPLACE FUNCTION reset_mark_sent(p_event_ids uuid[]) RETURNS void
LANGUAGE plpgsql SET enable_seqscan = off SET plan_cache_mode = force_generic_plan AS $$
BEGIN
    UPDATE reset_requests
       SET outcome = 'sent', sent_at = now(), last_error = NULL, updated_at = now()
     WHERE event_id = ANY (p_event_ids);
END
$$;
