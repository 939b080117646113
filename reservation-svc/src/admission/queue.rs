//! A room's queue in Redis: each step of [`protocol::admission::Room`] as one Lua script, line
//! for line, so that the steps of every replica run one at a time on the room's keys.
//!
//! The keys of a room, `<prefix>room:{<schedule>}:<part>`, share the hash tag `{<schedule>}`
//! (as the schedule's seat locks do), so a Redis Cluster keeps them on one slot: `state` (a hash: the counters, the bucket, the settings), `early` (a sorted set of
//! the entrants before the opening, scored by their draw), `tickets` (a hash: user → number, or
//! `v` for a number given up), `slots` (a sorted set of `c:<number>` and `u:<user>`, scored by
//! when each ends) and `left` (a set of numbers whose users left before their call).
//!
//! Every script reads Redis's clock (`TIME`) and does nothing when Redis runs it after the
//! moment its caller gave up on it; each carries the room's settings with their version, and
//! the newest version any replica has sent is the one every script uses. Every tick sets the
//! keys to expire a day later: a room whose performance has begun is ticked no more, and its
//! keys go a day after.

use fred::clients::Client;
use fred::types::scripts::Script;
use protocol::admission::{Counters, Millis, Standing, Tick};

use crate::model::RoomSettings;

/// What every script begins with: the clock, the deadline, the settings, and the reads that
/// mirror `Room`'s.
const PRELUDE: &str = r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
if now > tonumber(ARGV[8]) then
    return {-1, now}
end
local state, early, tickets, slots, left = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local function int(x)
    return string.format('%d', x)
end
local stored = redis.call('HMGET', state, 'cfg_version', 'rate', 'burst', 'max_active',
    'claim_window', 'token_ttl', 'opens_at')
local settings = {ARGV[7], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]}
if stored[1] and tonumber(stored[1]) >= tonumber(ARGV[7]) then
    settings = stored
else
    redis.call('HSET', state, 'cfg_version', ARGV[7], 'rate', ARGV[1], 'burst', ARGV[2],
        'max_active', ARGV[3], 'claim_window', ARGV[4], 'token_ttl', ARGV[5], 'opens_at', ARGV[6])
end
local rate, burst, max_active = tonumber(settings[2]), tonumber(settings[3]), tonumber(settings[4])
local claim_window, token_ttl = tonumber(settings[5]), tonumber(settings[6])
local opens_at = tonumber(settings[7])
local MICRO = 1000000
-- The burst, or a second of the rate if that is more.
local full = math.max(burst * MICRO, rate * 1000)
local ABSENT, BEFORE_OPENING, WAITING, ADMITTED, EXPIRED = 0, 1, 2, 3, 4

local function field(name)
    return tonumber(redis.call('HGET', state, name) or '0')
end
local function opened()
    local entrants = redis.call('HGET', state, 'opened')
    if entrants then
        return tonumber(entrants)
    end
    return nil
end
local function open_if_due()
    if not opened() and now >= opens_at then
        redis.call('HSET', state, 'opened', int(redis.call('ZCARD', early)),
            'bucket', int(full), 'bucket_at', int(now))
    end
end
local function number_of(user, member)
    local entry = redis.call('HGET', tickets, user)
    if entry then
        if entry == 'v' then
            return nil
        end
        return tonumber(entry)
    end
    if not opened() then
        return nil
    end
    local rank = redis.call('ZRANK', early, member)
    if rank then
        return rank + 1
    end
    return nil
end
local function standing(user, member)
    if not opened() then
        if redis.call('ZSCORE', early, member) then
            return {BEFORE_OPENING, 0, 0}
        end
        return {ABSENT, 0, 0}
    end
    local number = number_of(user, member)
    if not number then
        return {ABSENT, 0, 0}
    end
    local served = field('served')
    if number > served then
        return {WAITING, number, number - served - 1}
    end
    local ends = redis.call('ZSCORE', slots, 'u:' .. user)
    if ends and tonumber(ends) > now then
        return {ADMITTED, number, tonumber(ends)}
    end
    return {EXPIRED, number, 0}
end
local function claim(user, member)
    local number = number_of(user, member)
    if not number or number > field('served') then
        return
    end
    local ends = redis.call('ZSCORE', slots, 'c:' .. int(number))
    if ends and tonumber(ends) > now then
        redis.call('ZREM', slots, 'c:' .. int(number))
        redis.call('ZADD', slots, int(now + token_ttl), 'u:' .. user)
    end
end
";

/// `Room::enter`; `ARGV[9]` the user, `ARGV[10]` their member in `early`, `ARGV[11]` the draw.
/// Answers `{kind, number, ahead or end, now}`.
const ENTER: &str = r"
local user, member = ARGV[9], ARGV[10]
open_if_due()
if not opened() then
    redis.call('ZADD', early, 'NX', ARGV[11], member)
    return {BEFORE_OPENING, 0, 0, now}
end
claim(user, member)
local seen = standing(user, member)
if seen[1] == ABSENT or seen[1] == EXPIRED then
    local number = opened() + redis.call('HINCRBY', state, 'late', 1)
    redis.call('HSET', tickets, user, int(number))
    seen = standing(user, member)
end
return {seen[1], seen[2], seen[3], now}
";

/// `Room::look`: `ARGV[9]` the user, `ARGV[10]` their member. Answers as [`ENTER`].
const LOOK: &str = r"
local user, member = ARGV[9], ARGV[10]
open_if_due()
claim(user, member)
local seen = standing(user, member)
return {seen[1], seen[2], seen[3], now}
";

/// `Room::leave`: answers `{1 if anything was given up else 0, now}`.
const LEAVE: &str = r"
local user, member = ARGV[9], ARGV[10]
open_if_due()
if not opened() then
    return {redis.call('ZREM', early, member), now}
end
local number = number_of(user, member)
if not number then
    return {0, now}
end
redis.call('HSET', tickets, user, 'v')
if number > field('served') then
    redis.call('SADD', left, int(number))
else
    redis.call('ZREM', slots, 'c:' .. int(number), 'u:' .. user)
end
return {1, now}
";

/// `Room::release`: `ARGV[11]` when the hold was made (ms). Answers `{1 if a slot was freed
/// else 0, now}`.
const RELEASE: &str = r"
local ends = redis.call('ZSCORE', slots, 'u:' .. ARGV[9])
if ends and tonumber(ends) - token_ttl <= tonumber(ARGV[11]) then
    return {redis.call('ZREM', slots, 'u:' .. ARGV[9]), now}
end
return {0, now}
";

/// `Room::tick`, then the counters, then `Room::look` for each user of `ARGV[9..]` (user and
/// member in turn). Answers `{0, now, admitted, skipped, opened, issued, served, waiting,
/// active, admitted in the last whole minute, then kind, number, ahead or end for each look}`.
const TICK: &str = r"
open_if_due()
local admitted, skipped = 0, 0
local entrants = opened()
if entrants then
    local bucket, bucket_at = field('bucket'), field('bucket_at')
    if now > bucket_at then
        local elapsed = now - bucket_at
        if elapsed >= math.floor(full / rate) + 1 then
            bucket = full
        else
            bucket = math.min(bucket + elapsed * rate, full)
        end
        bucket_at = now
    end
    redis.call('ZREMRANGEBYSCORE', slots, '-inf', int(now))
    local free = max_active - redis.call('ZCARD', slots)
    local served = field('served')
    local issued = entrants + field('late')
    local steps = 0
    while free > 0 and bucket >= MICRO and served < issued and steps < 1000 do
        served = served + 1
        steps = steps + 1
        if redis.call('SREM', left, int(served)) == 1 then
            skipped = skipped + 1
        else
            redis.call('ZADD', slots, int(now + claim_window), 'c:' .. int(served))
            bucket = bucket - MICRO
            free = free - 1
            admitted = admitted + 1
        end
    end
    redis.call('HSET', state, 'bucket', int(bucket), 'bucket_at', int(bucket_at),
        'served', int(served))
    local minute = math.floor(now / 60000)
    local counted = field('minute')
    if counted ~= minute then
        local last = 0
        if minute == counted + 1 then
            last = field('minute_admitted')
        end
        redis.call('HSET', state, 'minute', int(minute), 'minute_admitted', '0',
            'last_minute_admitted', int(last))
    end
    if admitted > 0 then
        redis.call('HINCRBY', state, 'minute_admitted', admitted)
    end
end
-- The room's keys outlive their last tick by a day: a room whose performance has begun is no
-- longer ticked, and its queue goes.
for _, key in ipairs(KEYS) do
    redis.call('PEXPIRE', key, 86400000)
end
local active = redis.call('ZCOUNT', slots, '(' .. int(now), '+inf')
local answer
if entrants then
    local issued, served = entrants + field('late'), field('served')
    answer = {0, now, admitted, skipped, 1, issued, served,
        issued - served - redis.call('SCARD', left), active, field('last_minute_admitted')}
else
    answer = {0, now, 0, 0, 0, 0, 0, redis.call('ZCARD', early), active, 0}
end
for i = 9, #ARGV, 2 do
    claim(ARGV[i], ARGV[i + 1])
    local seen = standing(ARGV[i], ARGV[i + 1])
    answer[#answer + 1] = seen[1]
    answer[#answer + 1] = seen[2]
    answer[#answer + 1] = seen[3]
end
return answer
";

/// Why a step of the queue has no answer.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// Redis did not answer in time, or ran the script after its caller gave up on it.
    #[error("the waiting room's queue is unavailable: {0}")]
    Unavailable(String),
}

/// A standing, with the moment (Redis's clock) it was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub standing: Standing,
    pub now: Millis,
}

/// What a tick did and saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TickReport {
    pub now: Millis,
    pub tick: Tick,
    pub counters: Counters,
    pub admitted_last_minute: i64,
    /// The standing of each user looked up, in the order asked.
    pub looks: Vec<Standing>,
}

/// The scripts of the queue, on the replica's Redis connection.
#[derive(Clone)]
pub struct Queue {
    client: Client,
    key_prefix: String,
    command_timeout: std::time::Duration,
    enter: Script,
    look: Script,
    leave: Script,
    release: Script,
    tick: Script,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("key_prefix", &self.key_prefix)
            .finish_non_exhaustive()
    }
}

impl Queue {
    /// The queue on `client` (the seat locks' connection), its keys under `key_prefix`.
    pub fn new(client: Client, key_prefix: &str, command_timeout: std::time::Duration) -> Self {
        let script = |body: &str| Script::from_lua(format!("{PRELUDE}{body}"));
        Self {
            client,
            key_prefix: key_prefix.to_owned(),
            command_timeout,
            enter: script(ENTER),
            look: script(LOOK),
            leave: script(LEAVE),
            release: script(RELEASE),
            tick: script(TICK),
        }
    }

    /// The room's keys, in the order the scripts take them.
    fn keys(&self, schedule_id: i64) -> Vec<String> {
        let room = format!("{}room:{{{schedule_id}}}:", self.key_prefix);
        ["state", "early", "tickets", "slots", "left"]
            .into_iter()
            .map(|part| format!("{room}{part}"))
            .collect()
    }

    /// The arguments every script takes first: the settings, their version, the deadline.
    fn settings_args(&self, room: &RoomSettings) -> Vec<String> {
        let config = &room.config;
        vec![
            config.rate_milli_per_s.to_string(),
            config.burst.to_string(),
            config.max_active.to_string(),
            config.claim_window_ms.to_string(),
            config.token_ttl_ms.to_string(),
            config.opens_at_ms.to_string(),
            room.version.to_string(),
            crate::lock::deadline_ms(self.command_timeout),
        ]
    }

    async fn run(
        &self,
        command: &'static str,
        script: &Script,
        room: &RoomSettings,
        users: &[i64],
        extra: Option<i64>,
    ) -> Result<Vec<i64>, QueueError> {
        let mut args = self.settings_args(room);
        for &user in users {
            args.push(user.to_string());
            args.push(early_member(user));
        }
        args.extend(extra.map(|value| value.to_string()));
        let answer: Vec<i64> = crate::lock::run_script(
            &self.client,
            command,
            script,
            self.keys(room.schedule_id),
            args,
        )
        .await
        .map_err(|error| QueueError::Unavailable(error.to_string()))?;
        match answer.first() {
            Some(-1) => Err(QueueError::Unavailable(
                "redis ran the step after its deadline".to_owned(),
            )),
            Some(_) => Ok(answer),
            None => Err(QueueError::Unavailable("an empty answer".to_owned())),
        }
    }

    /// `Enter` for `user`, who is placed by `draw` if the room has not opened.
    pub async fn enter(
        &self,
        room: &RoomSettings,
        user: i64,
        draw: i64,
    ) -> Result<Seen, QueueError> {
        let answer = self
            .run("room_enter", &self.enter, room, &[user], Some(draw))
            .await?;
        seen(&answer)
    }

    /// The user's standing, their turn claimed if it has come.
    pub async fn look(&self, room: &RoomSettings, user: i64) -> Result<Seen, QueueError> {
        let answer = self
            .run("room_look", &self.look, room, &[user], None)
            .await?;
        seen(&answer)
    }

    /// Gives up the user's number or turn: whether they had one, and when (Redis's clock).
    pub async fn leave(
        &self,
        room: &RoomSettings,
        user: i64,
    ) -> Result<(bool, Millis), QueueError> {
        let answer = self
            .run("room_leave", &self.leave, room, &[user], None)
            .await?;
        changed(&answer)
    }

    /// A hold the user made at `held_at` is over: frees their slot if the hold was of their
    /// current turn. Whether it did, and when.
    pub async fn release(
        &self,
        room: &RoomSettings,
        user: i64,
        held_at: Millis,
    ) -> Result<(bool, Millis), QueueError> {
        let answer = self
            .run("room_release", &self.release, room, &[user], Some(held_at))
            .await?;
        changed(&answer)
    }

    /// A tick of the room, and the standing of each of `users` after it.
    pub async fn tick(&self, room: &RoomSettings, users: &[i64]) -> Result<TickReport, QueueError> {
        let answer = self.run("room_tick", &self.tick, room, users, None).await?;
        let malformed = || QueueError::Unavailable("a malformed tick answer".to_owned());
        let (head, looks) = answer.split_at_checked(10).ok_or_else(malformed)?;
        if looks.len() != users.len() * 3 {
            return Err(malformed());
        }
        let looks = looks
            .chunks_exact(3)
            .map(|look| standing(look[0], look[1], look[2]).ok_or_else(malformed))
            .collect::<Result<_, _>>()?;
        Ok(TickReport {
            now: head[1],
            tick: Tick {
                admitted: head[2],
                skipped: head[3],
            },
            counters: Counters {
                opened: head[4] == 1,
                issued: head[5],
                served: head[6],
                waiting: head[7],
                active: head[8],
            },
            admitted_last_minute: head[9],
            looks,
        })
    }
}

/// A user's member in the room's `early` set: zero-padded, so that members of equal draws sort
/// as their users do (Redis orders them as strings).
fn early_member(user: i64) -> String {
    format!("{user:020}")
}

fn changed(answer: &[i64]) -> Result<(bool, Millis), QueueError> {
    match answer {
        &[changed, now] => Ok((changed == 1, now)),
        _ => Err(QueueError::Unavailable(
            "a malformed answer from the queue".to_owned(),
        )),
    }
}

fn seen(answer: &[i64]) -> Result<Seen, QueueError> {
    match answer {
        &[kind, number, detail, now] => standing(kind, number, detail)
            .map(|standing| Seen { standing, now })
            .ok_or_else(|| QueueError::Unavailable(format!("an unknown standing {kind}"))),
        _ => Err(QueueError::Unavailable(
            "a malformed answer from the queue".to_owned(),
        )),
    }
}

/// A standing from a script's `{kind, number, ahead or end}`.
fn standing(kind: i64, number: i64, detail: i64) -> Option<Standing> {
    Some(match kind {
        0 => Standing::Absent,
        1 => Standing::BeforeOpening,
        2 => Standing::Waiting {
            number,
            ahead: detail,
        },
        3 => Standing::Admitted {
            number,
            until: detail,
        },
        4 => Standing::Expired { number },
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_of_equal_draws_sort_as_their_users() {
        assert!(early_member(9) < early_member(10));
        assert!(early_member(i64::MAX) > early_member(1));
    }

    #[test]
    fn answers_of_the_scripts_read_back() {
        assert_eq!(
            seen(&[2, 7, 3, 1_000]).ok(),
            Some(Seen {
                standing: Standing::Waiting {
                    number: 7,
                    ahead: 3
                },
                now: 1_000
            })
        );
        assert!(seen(&[9, 0, 0, 0]).is_err());
        assert!(seen(&[2, 7]).is_err());
    }
}
