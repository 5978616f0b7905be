-- wrk script: cycle through the requests in a file, count answers by status.
--
--   wrk ... -s requests.lua <url> -- <requests file> <send window in seconds>
--
-- Each line of the requests file is "METHOD PATH", "METHOD PATH<TAB>BODY"
-- (a JSON body, or nothing), then any number of "<TAB>Name: value" headers.  After the send window a connection sends nothing more, so
-- every request sent gets its answer before wrk stops (run wrk for longer than
-- the window): the counts of 201s are then exact, not short of the requests
-- that were in flight when wrk stopped.

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local clock = ffi.new("bench_timespec")

local function now()
  ffi.C.clock_gettime(1, clock) -- CLOCK_MONOTONIC: one clock for every thread
  return tonumber(clock.tv_sec) + tonumber(clock.tv_nsec) / 1e9
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

local prepared, count, index, deadline

function init(args)
  local window = tonumber(args[2])
  prepared, count, index = {}, 0, 0
  for line in io.lines(args[1]) do
    local fields = {}
    for field in (line .. "\t"):gmatch("([^\t]*)\t") do
      table.insert(fields, field)
    end
    local method, path = fields[1]:match("^(%S+)%s+(%S+)$")
    local body = fields[2]
    if body == "" then
      body = nil
    end
    local headers = {}
    if body then
      headers["Content-Type"] = "application/json"
    end
    for n = 3, #fields do
      local name, value = fields[n]:match("^([^:]+):%s*(.*)$")
      headers[name] = value
    end
    count = count + 1
    prepared[count] = wrk.format(method, path, headers, body)
  end
  sent, received, statuses, first, last = 0, 0, {}, 0, 0
  deadline = now() + window
end

-- wrk asks for a delay before each request it sends (and calls request()
-- once more at start-up, to check it), so requests are counted here.
function delay()
  local t = now()
  if t >= deadline then
    return 3600000 -- the window is over: stay idle until wrk stops
  end
  if sent == 0 then
    first = t
  end
  sent = sent + 1
  return 0
end

function request()
  index = index % count + 1
  return prepared[index]
end

function response(status, headers, body)
  received = received + 1
  statuses[tostring(status)] = (statuses[tostring(status)] or 0) + 1
  last = now()
end

function done(summary, latency, requests)
  local total = { sent = 0, received = 0, first = nil, last = 0 }
  local merged = {}
  for _, thread in ipairs(threads) do
    total.sent = total.sent + thread:get("sent")
    total.received = total.received + thread:get("received")
    local first = thread:get("first")
    if first > 0 and (total.first == nil or first < total.first) then
      total.first = first
    end
    total.last = math.max(total.last, thread:get("last"))
    for status, n in pairs(thread:get("statuses")) do
      merged[status] = (merged[status] or 0) + n
    end
  end
  local parts = {}
  for status, n in pairs(merged) do
    table.insert(parts, string.format('"%s": %d', status, n))
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH {"sent": %d, "received": %d, "elapsed": %.6f, "statuses": {%s}, ' ..
    '"p50_us": %d, "p99_us": %d, "max_us": %d, ' ..
    '"socket_errors": {"connect": %d, "read": %d, "write": %d, "timeout": %d}}\n',
    total.sent, total.received, total.last - (total.first or total.last),
    table.concat(parts, ", "),
    latency:percentile(50), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.timeout))
end
