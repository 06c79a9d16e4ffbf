-- wrk script for the serve benchmarks: POST bodies made of parts joined by a counter, so that
-- every request is distinct (review uid, object name, user; or the auditIDs of an EventList).
--
--   BENCH_RATE=500 wrk -t1 -c8 -d8s -s bench/post.lua https://127.0.0.1:PORT -- DIR NPARTS START PATH
--
-- DIR/part1..partN are the body's pieces; request k (from START) is part1 .. k .. part2 .. k ...
-- BENCH_RATE > 0 paces the requests on one schedule (slot i at t0 + i/rate, whatever connection
-- takes it); wrk measures each latency from the moment its request is written.
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts)  -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local parts = {}
local counter = 0
local path = "/validate"
local headers = {["Content-Type"] = "application/json", ["Accept"] = "application/json, */*"}

function init(args)
  local dir, n = args[1], tonumber(args[2])
  for i = 1, n do
    local f = assert(io.open(dir .. "/part" .. i, "rb"))
    parts[i] = f:read("*a")
    f:close()
  end
  counter = tonumber(args[3])
  path = args[4] or path
end

function request()
  local body
  if #parts == 1 then body = parts[1] else body = table.concat(parts, tostring(counter)) end
  counter = counter + 1
  return wrk.format("POST", path, headers, body)
end

local rate = tonumber(os.getenv("BENCH_RATE") or "0")
if rate > 0 then
  local interval = 1000 / rate
  local next_slot = nil
  function delay()
    local t = now_ms()
    if next_slot == nil then next_slot = t end
    next_slot = next_slot + interval
    local d = next_slot - t
    if d < 0 then return 0 end
    return math.floor(d)
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,"status":%d,' ..
    '"timeout":%d,"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d,"mean":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max, latency.mean))
end
