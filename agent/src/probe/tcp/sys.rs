//! The TCP prober's only unsafe code: `getsockopt(TCP_INFO)` into a byte buffer, parsed by
//! [`super::handshake`]. Linux only; elsewhere the read fails with `Unsupported` and records
//! keep the user-space connect time.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::AsFd;

use super::handshake::TCP_INFO_LEN;

/// Reads the first [`TCP_INFO_LEN`] bytes of the socket's `struct tcp_info` into `buf` and
/// returns how many the kernel wrote.
///
/// # Errors
///
/// The `getsockopt` error.
#[cfg(target_os = "linux")]
pub(crate) fn read_tcp_info(sock: &impl AsFd, buf: &mut [u8; TCP_INFO_LEN]) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    let mut len = TCP_INFO_LEN as libc::socklen_t;
    // SAFETY: the descriptor is borrowed from a live socket for the duration of the call; `buf`
    // is a live, writable buffer of exactly `len` bytes, and the kernel writes at most `len`
    // bytes (any alignment: it copies bytes) and stores the count it wrote in `len`.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_fd().as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            buf.as_mut_ptr().cast(),
            &raw mut len,
        )
    };
    if rc == 0 {
        Ok((len as usize).min(TCP_INFO_LEN))
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `TCP_INFO` is Linux's; elsewhere there is no kernel figure.
#[cfg(not(target_os = "linux"))]
pub(crate) fn read_tcp_info(_sock: &impl AsFd, _buf: &mut [u8; TCP_INFO_LEN]) -> io::Result<usize> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "TCP_INFO is Linux-only",
    ))
}
