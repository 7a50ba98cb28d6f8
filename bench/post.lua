-- wrk script: POST /payments with a fresh correlationId per request.
-- Usage: wrk -t1 -c50 -d10s --latency -s bench/post.lua http://127.0.0.1:9999
-- Each wrk thread counts on its own and gets its own number in the id; the random part keeps
-- runs apart.
local thread_count = 0
function setup(thread)
  thread_count = thread_count + 1
  thread:set("thread_number", thread_count)
end

local counter = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

function init(args)
  math.randomseed(os.time() + (thread_number or 0))
  run = math.random(0, 0xffffff)
end

function request()
  counter = counter + 1
  local id = string.format("%06x%02x-0000-4000-8000-%012x", run, thread_number or 0, counter)
  return wrk.format(nil, "/payments", nil, '{"correlationId":"' .. id .. '","amount":19.90}')
end
