//! Reading a password for `brokerd passwd`: twice from the terminal without echo, or one line
//! of standard input with `--password-stdin`. Binary-only (anyhow); the password is never
//! printed, and a line is read with a bound.

use std::io::{BufRead, Read, Write};

use anyhow::{bail, Context};

/// The longest password MQTT can carry (a CONNECT's password field).
const MAX_PASSWORD: u64 = 65_535;

/// The password to store, from standard input (one line) or from the terminal (twice).
pub(crate) fn read_password(from_stdin: bool) -> anyhow::Result<Vec<u8>> {
    let stdin = std::io::stdin();
    if from_stdin {
        return read_line(&mut stdin.lock())?.context("no password on standard input");
    }
    #[cfg(unix)]
    if rustix::termios::isatty(&stdin) {
        let first = prompt_no_echo("Password: ")?;
        let second = prompt_no_echo("Reenter password: ")?;
        if first != second {
            bail!("the passwords do not match");
        }
        return Ok(first);
    }
    bail!("standard input is not a terminal: use --password-stdin to read the password from it")
}

/// One line without its line ending; `None` at end of input.
fn read_line(input: &mut impl BufRead) -> anyhow::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    let n = input
        .take(MAX_PASSWORD + 3)
        .read_until(b'\n', &mut line)
        .context("reading the password")?;
    if n == 0 {
        return Ok(None);
    }
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    } else if n as u64 > MAX_PASSWORD {
        bail!("the password is longer than {MAX_PASSWORD} bytes");
    }
    Ok(Some(line))
}

/// Prints `prompt` on stderr and reads one line from the terminal with echo off, restoring
/// the terminal's settings afterwards.
#[cfg(unix)]
fn prompt_no_echo(prompt: &str) -> anyhow::Result<Vec<u8>> {
    use rustix::termios::{tcgetattr, tcsetattr, LocalModes, OptionalActions};
    let stdin = std::io::stdin();
    let mut err = std::io::stderr();
    let _ = err.write_all(prompt.as_bytes());
    let _ = err.flush();
    let saved = tcgetattr(&stdin).context("reading the terminal's settings")?;
    let mut quiet = saved.clone();
    quiet.local_modes -= LocalModes::ECHO;
    quiet.local_modes |= LocalModes::ECHONL;
    tcsetattr(&stdin, OptionalActions::Flush, &quiet).context("turning echo off")?;
    let line = read_line(&mut stdin.lock());
    let _ = tcsetattr(&stdin, OptionalActions::Flush, &saved);
    line?.context("no password entered")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// issue #9 item 1: `--password-stdin` reads one line without its CR/LF ending, and refuses one
    /// over 65535 bytes.
    #[test]
    fn a_line_without_its_ending_and_bounded() {
        let mut input = &b"s3cret pass\r\nnext\n"[..];
        assert_eq!(read_line(&mut input).unwrap().unwrap(), b"s3cret pass");
        assert!(read_line(&mut &b""[..]).unwrap().is_none());
        assert_eq!(
            read_line(&mut &b"no newline"[..]).unwrap().unwrap(),
            b"no newline"
        );
        let long = vec![b'x'; 70_000];
        assert!(read_line(&mut &long[..]).is_err());
    }
}
