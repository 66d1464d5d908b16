//! Where the keys of a command are: its key specs applied to an argument list, with the
//! checks and error texts of the command itself.

use crate::redis::resp::parse_i64;

use super::{CommandError, CommandSpec, KeySpec, Kind, NumKeysErrors};

/// The indices of the keys in `args` (`args[0]` is the command name), in the order Redis'
/// `COMMAND GETKEYS` gives them. For a container, the subcommand named by `args[1]` is used.
///
/// Errors are those the command itself would raise before touching a key: arity, a bad
/// numkeys, unbalanced XREAD streams, an incomplete MSET pair, an unknown subcommand.
/// Otherwise a command Redis would reject for other reasons still gets its key positions, so
/// the proxy can forward it and let Redis phrase the error.
pub fn key_indices<A: AsRef<[u8]>>(
    spec: &'static CommandSpec,
    args: &[A],
) -> Result<Vec<usize>, CommandError> {
    let spec = pick_subcommand(spec, args)?;
    if !spec.arity_ok(args.len()) {
        return Err(CommandError::WrongArity(spec.error_name()));
    }
    let argc = args.len();
    let arg = |i: usize| args.get(i).map(AsRef::as_ref);
    let mut keys = Vec::new();
    for key_spec in spec.keys {
        match *key_spec {
            KeySpec::Range { first, last, step } => {
                let last = if last >= 0 {
                    last.unsigned_abs()
                } else {
                    match argc.checked_sub(last.unsigned_abs()) {
                        Some(last) => last,
                        None => continue,
                    }
                };
                // Redis drops the whole key list when a range is out of bounds (for us only
                // `PFMERGE dest` without sources, which is valid and has a key): skip it.
                if first > last || last >= argc {
                    continue;
                }
                let step = step.max(1);
                if !(last + 1 - first).is_multiple_of(step) {
                    return Err(CommandError::WrongArity(spec.error_name()));
                }
                keys.extend((first..=last).step_by(step));
            }
            KeySpec::NumKeys {
                numkeys_at,
                first_key,
                errors,
            } => {
                let count = numkeys(
                    spec,
                    arg(numkeys_at),
                    argc.saturating_sub(first_key),
                    errors,
                )?;
                keys.extend(first_key..first_key + count);
            }
            KeySpec::Keyword {
                keyword,
                start_from,
            } => {
                if let Some(at) = find_keyword(args, keyword, start_from) {
                    keys.push(at + 1);
                }
            }
            KeySpec::Streams { group } => keys.extend(read_streams(args, group)?.keys),
            KeySpec::SortStore => {
                let mut store = None;
                let mut i = 2;
                while let Some(option) = arg(i) {
                    if option.eq_ignore_ascii_case(b"limit") {
                        i += 2;
                    } else if option.eq_ignore_ascii_case(b"get")
                        || option.eq_ignore_ascii_case(b"by")
                    {
                        i += 1;
                    } else if option.eq_ignore_ascii_case(b"store") && i + 1 < argc {
                        // No skip: Redis examines the destination as an option too.
                        store = Some(i + 1);
                    }
                    i += 1;
                }
                keys.extend(store);
            }
        }
    }
    Ok(keys)
}

/// Whether the command may hold its connection waiting: always for [`Kind::Blocking`]
/// commands, except XREAD/XREADGROUP, which only wait with a BLOCK option.
pub fn blocks<A: AsRef<[u8]>>(spec: &CommandSpec, args: &[A]) -> bool {
    if spec.kind != Kind::Blocking {
        return false;
    }
    match spec.keys {
        [KeySpec::Streams { group }] => read_streams(args, *group).is_ok_and(|read| read.block),
        _ => true,
    }
}

/// What XREAD / XREADGROUP options say about keys and blocking.
struct StreamsRead {
    keys: std::ops::Range<usize>,
    block: bool,
}

/// Walks XREAD / XREADGROUP options exactly like `xreadCommand`, errors included, rather than
/// searching for the first `STREAMS` as `COMMAND GETKEYS` does: a consumer named "streams"
/// must not be taken for the keyword, and the command's own error is the one to report.
fn read_streams<A: AsRef<[u8]>>(args: &[A], group: bool) -> Result<StreamsRead, CommandError> {
    let argc = args.len();
    let arg = |i: usize| args.get(i).map(AsRef::as_ref).unwrap_or_default();
    let (mut block, mut has_group) = (false, false);
    let mut i = 1;
    while i < argc {
        let more = argc - i - 1;
        let option = arg(i);
        if option.eq_ignore_ascii_case(b"block") && more > 0 {
            i += 1;
            let timeout = parse_i64(arg(i)).ok_or(CommandError::TimeoutNotInteger)?;
            if timeout < 0 {
                return Err(CommandError::NegativeTimeout);
            }
            block = true;
        } else if option.eq_ignore_ascii_case(b"count") && more > 0 {
            i += 1;
            parse_i64(arg(i)).ok_or(CommandError::NotAnInteger)?;
        } else if option.eq_ignore_ascii_case(b"streams") && more > 0 {
            let first = i + 1;
            let rest = argc - first;
            if !rest.is_multiple_of(2) {
                return Err(CommandError::UnbalancedStreams);
            }
            if group && !has_group {
                return Err(CommandError::MissingGroup);
            }
            return Ok(StreamsRead {
                keys: first..first + rest / 2,
                block,
            });
        } else if option.eq_ignore_ascii_case(b"group") && more >= 2 {
            if !group {
                return Err(CommandError::GroupWithoutXreadgroup);
            }
            has_group = true;
            i += 2;
        } else if option.eq_ignore_ascii_case(b"noack") {
            if !group {
                return Err(CommandError::NoackWithoutXreadgroup);
            }
        } else {
            return Err(CommandError::Syntax);
        }
        i += 1;
    }
    // No STREAMS option.
    Err(CommandError::Syntax)
}

/// The subcommand a container's argument list names; any other spec unchanged.
pub(super) fn pick_subcommand<A: AsRef<[u8]>>(
    spec: &'static CommandSpec,
    args: &[A],
) -> Result<&'static CommandSpec, CommandError> {
    match args.get(1) {
        Some(sub) if !spec.subcommands.is_empty() => {
            spec.subcommand(sub.as_ref())
                .ok_or_else(|| CommandError::UnknownSubcommand {
                    subcommand: c_text(sub.as_ref(), 128),
                    command: c_text(
                        args.first().map(AsRef::as_ref).unwrap_or_default(),
                        usize::MAX,
                    )
                    .to_ascii_uppercase(),
                })
        }
        _ => Ok(spec),
    }
}

/// Where Redis' keyword search finds `keyword`: from `start_from` up to the next-to-last
/// argument (a keyword in last position has no key after it).
fn find_keyword<A: AsRef<[u8]>>(args: &[A], keyword: &str, start_from: usize) -> Option<usize> {
    let end = args.len().saturating_sub(1);
    (start_from..end).find(|&i| {
        args.get(i)
            .is_some_and(|a| a.as_ref().eq_ignore_ascii_case(keyword.as_bytes()))
    })
}

/// Parses a numkeys argument with the checks, and error texts, of the command family.
fn numkeys(
    spec: &CommandSpec,
    raw: Option<&[u8]>,
    available: usize,
    errors: NumKeysErrors,
) -> Result<usize, CommandError> {
    let value = raw.and_then(parse_i64);
    let (not_integer, below_min, min, too_many) = match errors {
        NumKeysErrors::Eval => (
            CommandError::NotAnInteger,
            CommandError::NegativeNumKeys,
            0,
            CommandError::TooManyKeys,
        ),
        NumKeysErrors::Fcall => (
            CommandError::BadNumKeys,
            CommandError::NegativeNumKeys,
            0,
            CommandError::TooManyKeys,
        ),
        NumKeysErrors::Mpop => (
            CommandError::NumKeysNotPositive,
            CommandError::NumKeysNotPositive,
            1,
            CommandError::Syntax,
        ),
        NumKeysErrors::SinterCard => (
            CommandError::NumKeysNotPositive,
            CommandError::NumKeysNotPositive,
            1,
            CommandError::TooManyKeys,
        ),
        NumKeysErrors::Zset => (
            CommandError::NotAnInteger,
            CommandError::NoInputKey(spec.name),
            1,
            CommandError::Syntax,
        ),
    };
    let value = value.ok_or(not_integer)?;
    if value < min {
        return Err(below_min);
    }
    let count = usize::try_from(value).map_err(|_| too_many.clone())?;
    if count > available {
        return Err(too_many);
    }
    Ok(count)
}

/// Bytes as Redis prints them with `%.Ns`: cut at a NUL or after `max` bytes; CR and LF
/// become spaces (Redis strips them from error lines); invalid UTF-8 is replaced.
fn c_text(bytes: &[u8], max: usize) -> String {
    let end = memchr::memchr(0, bytes).unwrap_or(bytes.len()).min(max);
    let text: Vec<u8> = bytes
        .get(..end)
        .unwrap_or_default()
        .iter()
        .map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b })
        .collect();
    String::from_utf8_lossy(&text).into_owned()
}

/// Redis' "unknown command" error: the name, then the first arguments quoted, 128 bytes' worth.
pub(super) fn unknown_command<A: AsRef<[u8]>>(args: &[A]) -> CommandError {
    let name = c_text(args.first().map(AsRef::as_ref).unwrap_or_default(), 128);
    let mut list = Vec::new();
    for arg in args.iter().skip(1) {
        if list.len() >= 128 {
            break;
        }
        let room = 128 - list.len();
        let arg = arg.as_ref();
        let end = memchr::memchr(0, arg).unwrap_or(arg.len()).min(room);
        list.push(b'\'');
        list.extend_from_slice(arg.get(..end).unwrap_or_default());
        list.extend_from_slice(b"' ");
    }
    CommandError::UnknownCommand {
        name,
        args: c_text(&list, usize::MAX),
    }
}
