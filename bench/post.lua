-- wrk script: POST /payments with a fresh correlationId per request.
-- Usage: wrk -t1 -c50 -d10s --latency -s bench/post.lua http://127.0.0.1:9999
-- One wrk thread keeps the counter unique; the random prefix keeps runs apart.
math.randomseed(os.time())
local run = math.random(0, 0x7fffffff)
local counter = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

request = function()
  counter = counter + 1
  local id = string.format("%08x-0000-4000-8000-%012x", run, counter)
  return wrk.format(nil, "/payments", nil, '{"correlationId":"' .. id .. '","amount":19.90}')
end
