-- wrk script: one new user_action event per POST /events (ids never repeat within a run).
-- EVENTPIPE_API_KEY=$(cat .data/api_key) wrk -t1 -c16 -d30s --latency -s benchmarks/single_event.lua http://127.0.0.1:8000
local headers = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. (os.getenv("EVENTPIPE_API_KEY") or "")}
local counter = 0
local prefix = string.format("wrk-%d-%d", os.time(), math.random(1e9))

request = function()
  counter = counter + 1
  local body = string.format(
    '{"id":"%s-%d","type":"user_action","schema_version":1,"timestamp":"2026-11-30T04:00:00Z",'
      .. '"user_id":"u%d","action":"click","target":"btn"}',
    prefix, counter, counter % 500)
  return wrk.format("POST", "/events", headers, body)
end
