-- Argo CD health check for PpioInstance (gpus.ppio.com/v1alpha1).
--
-- Install: put this whole file under the key
--   resource.customizations.health.gpus.ppio.com_PpioInstance
-- of the argocd-cm ConfigMap (with the Argo CD Helm chart:
-- configs.cm."resource.customizations.health.gpus.ppio.com_PpioInstance"), for example
--   kubectl -n argocd patch configmap argocd-cm --type merge -p "$(jq -n --rawfile s argocd-health.lua \
--     '{data: {"resource.customizations.health.gpus.ppio.com_PpioInstance": $s}}')"
-- It uses only Lua's base and table libraries, so it needs no useOpenLibs.
--
-- It reads the conditions the operator writes (Ready, Synced, Reconciling, Stalled) and
-- status.state. With spec.expect, Ready means "the state spec.expect.state names" (an
-- instance parked on purpose, expect.state: exited, is Ready), a state other than the
-- expected one is Reconciling=True AwaitingExpectedState within the grace period and
-- Stalled=True UnexpectedState after it. First match wins:
--   no status or conditions yet, or status.observedGeneration behind  -> Progressing
--   Synced=False reason Suspended (spec.suspend: true)                 -> Suspended
--   Stalled=True (instance gone, drifted from spec.expect, credentials
--                 or permissions wrong, ...)                          -> Degraded
--   Synced=False (PPIO unavailable, rate limited, ...)                 -> Degraded
--   Reconciling=True (a transitional state such as starting, or a state
--                 other than spec.expect's within its grace period)   -> Progressing
--   Ready not yet True or False                                        -> Progressing
--   Ready=True (running, or the state spec.expect names)               -> Healthy
--   state exited (stopped on purpose)                                  -> Suspended
--   state removed (released in PPIO)                                   -> Degraded
-- The message is the deciding condition's reason and message.
-- Checked with tools/health (ppio-health), which runs this file as Argo CD does.

local hs = {}

local status = obj.status
local conditions = nil
if type(status) == "table" then
  conditions = status.conditions
end
if type(conditions) ~= "table" or #conditions == 0 then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe the instance"
  return hs
end

local metadata = obj.metadata or {}
if metadata.generation ~= nil and status.observedGeneration ~= nil
    and status.observedGeneration ~= metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(metadata.generation)
  return hs
end

local function find(conditionType)
  for _, c in ipairs(conditions) do
    if type(c) == "table" and c.type == conditionType then
      return c
    end
  end
  return nil
end

local function describe(c)
  local reason = c.reason or ""
  local message = c.message or ""
  if reason == "" then
    return message
  end
  if message == "" then
    return reason
  end
  return reason .. ": " .. message
end

local ready = find("Ready")
local synced = find("Synced")
local reconciling = find("Reconciling")
local stalled = find("Stalled")
local state = status.state

if synced ~= nil and synced.status == "False" and synced.reason == "Suspended" then
  hs.status = "Suspended"
  hs.message = describe(synced)
  return hs
end

if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(stalled)
  return hs
end

if synced ~= nil and synced.status == "False" then
  hs.status = "Degraded"
  hs.message = describe(synced)
  return hs
end

if reconciling ~= nil and reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = describe(reconciling)
  return hs
end

if ready == nil or (ready.status ~= "True" and ready.status ~= "False") then
  hs.status = "Progressing"
  if ready ~= nil then
    hs.message = describe(ready)
  else
    hs.message = "Waiting for the operator to observe the instance"
  end
  return hs
end

if ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready)
  return hs
end

if state == "exited" then
  hs.status = "Suspended"
  hs.message = describe(ready)
  return hs
end

if state == "removed" then
  hs.status = "Degraded"
  hs.message = describe(ready)
  return hs
end

hs.status = "Progressing"
hs.message = describe(ready)
return hs
