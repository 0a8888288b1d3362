//! Reading the password: `KALAM_PASSWORD`, or a prompt on the terminal without echo.

use std::fs::OpenOptions;
use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::AsRawFd;

/// Environment variable holding the password (no command-line flag: it would show in `ps`).
pub(crate) const PASSWORD_ENV: &str = "KALAM_PASSWORD";

/// The password from [`PASSWORD_ENV`], or else asked on the controlling terminal.
pub(crate) fn password(user: &str) -> Result<String, String> {
    if let Ok(password) = std::env::var(PASSWORD_ENV) {
        return Ok(password);
    }
    prompt(&format!("Password for {user}: ")).map_err(|e| {
        format!("cannot read the password ({e}); set {PASSWORD_ENV} when there is no terminal")
    })
}

/// Prints `prompt` on `/dev/tty` and reads one line with echo off.
fn prompt(prompt: &str) -> io::Result<String> {
    let tty = OpenOptions::new().read(true).write(true).open("/dev/tty")?;
    let fd = tty.as_raw_fd();
    // SAFETY: termios is plain data; tcgetattr fills it in or fails.
    let mut term: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open for the lifetime of `tty`.
    if unsafe { libc::tcgetattr(fd, &mut term) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let saved = term;
    term.c_lflag &= !libc::ECHO;
    term.c_lflag |= libc::ECHONL;
    (&tty).write_all(prompt.as_bytes())?;
    (&tty).flush()?;
    // SAFETY: as above; `term` is a valid termios.
    if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &term) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut line = String::new();
    let read = BufReader::new(&tty).read_line(&mut line);
    // SAFETY: restores the settings read above.
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, &saved) };
    if read? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "no password given",
        ));
    }
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}
