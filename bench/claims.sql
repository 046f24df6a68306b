-- One batch of 16 claims for random accounts, as the worker sends them (bench/run, part "claims").
SELECT count(*) FROM reset_find_and_claim(
  (SELECT array_agg(gen_random_uuid()) FROM generate_series(1,16)),
  (SELECT array_agg('acct' || (random()*19999)::int) FROM generate_series(1,16)),
  (SELECT array_agg('r' || g) FROM generate_series(1,16) g),
  (SELECT array_agg(now()) FROM generate_series(1,16)),
  (SELECT array_agg(1) FROM generate_series(1,16)),
  (SELECT array_agg(decode(md5(random()::text) || md5(random()::text), 'hex')) FROM generate_series(1,16)),
  (SELECT array_agg(1800::float8) FROM generate_series(1,16)),
  (SELECT array_agg(0::float8) FROM generate_series(1,16)),
  (SELECT array_agg(1000) FROM generate_series(1,16)),
  (SELECT array_agg(false) FROM generate_series(1,16)),
  (SELECT array_agg(gen_random_uuid()) FROM generate_series(1,16)),
  60);
