-- Send DEPTH pipelined GET requests per write (depth is the first script argument).
local request_batch

init = function(args)
  local depth = tonumber(args[1]) or 16
  local requests = {}
  for i = 1, depth do
    requests[i] = wrk.format(nil)
  end
  request_batch = table.concat(requests)
end

request = function()
  return request_batch
end
