//! Sans-IO: the kernel's figure for a fresh connection's handshake, and which figure a record
//! gets ([`connect_time`]).
//!
//! # Why `TCP_INFO`
//!
//! A connect timed in user space ends when the agent gets round to noticing the connection:
//! with tokio that is the reactor's wake-up of the task, 0.1–0.2 ms on an idle machine and more
//! when other probes keep the runtime busy — as large as a round trip inside one AWS
//! availability zone. Linux measures the handshake itself: it stamps the SYN when it is
//! transmitted (`skb_mstamp_ns`, in `tcp_connect`) and, when the SYN-ACK is processed
//! (`tcp_rcv_synsent_state_process` → `tcp_ack` → `tcp_clean_rtx_queue`), takes the difference
//! as the first RTT sample. On a fresh connection that sample is the only one, and
//! `tcp_rtt_estimator` sets `srtt = sample` (stored ×8 in µs), so `getsockopt(TCP_INFO)`'s
//! `tcpi_rtt` (= `srtt_us >> 3`) is exactly the SYN → SYN-ACK round trip in microseconds. It is
//! fixed when the handshake completes, so reading it after the (late) wake-up loses nothing,
//! as long as nothing we send has been acknowledged yet — the probes read it right after
//! connect, before writing a byte.
//!
//! The sample is taken only for a SYN that was not retransmitted (Karn's rule): after a
//! retransmission the kernel falls back to the timestamp option's echo (1 ms ticks) or has no
//! sample at all, and the handshake's real duration includes the retransmission timeout — on
//! loopback, a SYN dropped once by a full accept queue gives `tcpi_rtt` = 1 ms for a connect
//! that took 1 s (test `a_retransmitted_syn_falls_back_to_the_user_space_figure`). So
//! `tcpi_total_retrans > 0` means "no kernel figure" and the record keeps the user-space one.
//!
//! Alternatives measured or ruled out (loopback, Linux 6.18, 2 cores; README "TCP connect
//! accuracy" has the figures): a blocking `connect()` on a dedicated thread still counts the
//! syscall's own work (port choice, route lookup) and the thread's wake-up — back to back,
//! 23–34 µs median from Python where the kernel's sample of the same connections reads 5–7 µs —
//! and would cost a thread per sample. `SO_TIMESTAMPING` cannot stamp a handshake: TCP transmit
//! stamps are keyed to payload bytes (a SYN carries none) and receive stamps come with data
//! read, which a SYN-ACK has none of.
//!
//! # What the kernel figure leaves out, and in
//!
//! It starts when the SYN is built, after `connect()`'s local work (socket, port choice,
//! route), and ends when this host's TCP processes the SYN-ACK, before the application is
//! told. It includes both hosts' network stacks between those points (on loopback the whole
//! figure is stack: 5 µs back to back, 25–37 µs with the CPU idle between samples), and any
//! delay of the receive path (softirq work deferred to `ksoftirqd`), as every packet's RTT
//! does. It has microsecond resolution.
//!
//! # `TCP_INFO` layout read here
//!
//! `struct tcp_info` (`include/uapi/linux/tcp.h`), native byte order, fields present since
//! Linux 2.6 (the first 104 bytes): `tcpi_state` (u8 at offset 0), `tcpi_rtt` (u32 µs at 68),
//! `tcpi_total_retrans` (u32 at 100).

use meshlat_proto::record::TcpTimeSource;

/// Bytes of `struct tcp_info` this module reads: up to and including `tcpi_total_retrans`.
pub const TCP_INFO_LEN: usize = 104;
/// Offset of `tcpi_state` (u8).
const TCPI_STATE: usize = 0;
/// Offset of `tcpi_rtt` (u32, µs: smoothed RTT, = the one sample on a fresh connection).
const TCPI_RTT: usize = 68;
/// Offset of `tcpi_total_retrans` (u32: segments retransmitted, the SYN included).
const TCPI_TOTAL_RETRANS: usize = 100;
/// `TCP_ESTABLISHED`.
const TCP_ESTABLISHED: u8 = 1;
/// `TCP_CLOSE_WAIT`: established, and the peer already sent its FIN (a responder that closes
/// at once, like meshlat's, can get there before we look).
const TCP_CLOSE_WAIT: u8 = 8;

/// Why `TCP_INFO` gave no handshake figure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NoKernelRtt {
    /// The kernel returned fewer bytes than the fields we read.
    #[error("TCP_INFO returned {len} bytes, {TCP_INFO_LEN} needed")]
    Truncated {
        /// Bytes returned.
        len: usize,
    },
    /// The connection is not (or no longer) established.
    #[error("connection in TCP state {state}, not established")]
    NotEstablished {
        /// `tcpi_state`.
        state: u8,
    },
    /// The SYN (or something after it) was retransmitted: the kernel's sample, if any, does not
    /// cover the whole handshake.
    #[error("{count} segment(s) retransmitted")]
    Retransmitted {
        /// `tcpi_total_retrans`.
        count: u32,
    },
    /// The kernel holds no RTT sample.
    #[error("no RTT sample")]
    NoSample,
}

/// The handshake round trip in nanoseconds from the bytes of `getsockopt(TCP_INFO)` read right
/// after connect (before anything was sent).
///
/// # Errors
///
/// [`NoKernelRtt`] when the bytes give no figure for the whole handshake.
pub fn handshake_rtt_ns(info: &[u8]) -> Result<u64, NoKernelRtt> {
    let u32_at = |off: usize| -> Option<u32> {
        let b = info.get(off..off + 4)?;
        Some(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    };
    let (Some(&state), Some(rtt_us), Some(retrans)) = (
        info.get(TCPI_STATE),
        u32_at(TCPI_RTT),
        u32_at(TCPI_TOTAL_RETRANS),
    ) else {
        return Err(NoKernelRtt::Truncated { len: info.len() });
    };
    if state != TCP_ESTABLISHED && state != TCP_CLOSE_WAIT {
        return Err(NoKernelRtt::NotEstablished { state });
    }
    if retrans > 0 {
        return Err(NoKernelRtt::Retransmitted { count: retrans });
    }
    if rtt_us == 0 {
        return Err(NoKernelRtt::NoSample);
    }
    Ok(u64::from(rtt_us) * 1_000)
}

/// A sample's connect time and where it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectTime {
    /// Nanoseconds.
    pub ns: u64,
    /// Kernel or user space.
    pub source: TcpTimeSource,
}

/// The figure a record gets: the kernel's handshake RTT when there is one for the whole connect
/// phase, else `user_ns` (the process clock from the first attempt's start to connected).
///
/// `kernel_ns` must be `None` when the connect phase was more than that one handshake (an
/// earlier address failed first). A kernel figure above `user_ns` cannot be right — the
/// handshake happens inside the timed span — and is ignored.
pub fn connect_time(user_ns: u64, kernel_ns: Option<u64>) -> ConnectTime {
    match kernel_ns {
        Some(k) if k <= user_ns => ConnectTime {
            ns: k,
            source: TcpTimeSource::Kernel,
        },
        _ => ConnectTime {
            ns: user_ns,
            source: TcpTimeSource::User,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `tcp_info` prefix as the kernel writes it.
    fn info(state: u8, rtt_us: u32, total_retrans: u32) -> [u8; TCP_INFO_LEN] {
        let mut b = [0u8; TCP_INFO_LEN];
        b[TCPI_STATE] = state;
        // Fields around the ones read, so a wrong offset reads a wrong value.
        b[TCPI_RTT - 4..TCPI_RTT].copy_from_slice(&7777u32.to_ne_bytes()); // tcpi_rcv_ssthresh
        b[TCPI_RTT..TCPI_RTT + 4].copy_from_slice(&rtt_us.to_ne_bytes());
        b[TCPI_RTT + 4..TCPI_RTT + 8].copy_from_slice(&9999u32.to_ne_bytes()); // tcpi_rttvar
        b[TCPI_TOTAL_RETRANS - 4..TCPI_TOTAL_RETRANS].copy_from_slice(&65483u32.to_ne_bytes());
        b[TCPI_TOTAL_RETRANS..].copy_from_slice(&total_retrans.to_ne_bytes());
        b
    }

    #[test]
    fn reads_the_handshake_rtt_of_an_established_connection() {
        assert_eq!(
            handshake_rtt_ns(&info(TCP_ESTABLISHED, 137, 0)),
            Ok(137_000)
        );
        // The peer's FIN may have arrived already: still the handshake's sample.
        assert_eq!(handshake_rtt_ns(&info(TCP_CLOSE_WAIT, 5, 0)), Ok(5_000));
        // A longer struct (newer kernels) reads the same.
        let mut long = info(TCP_ESTABLISHED, 42, 0).to_vec();
        long.extend_from_slice(&[0xff; 128]);
        assert_eq!(handshake_rtt_ns(&long), Ok(42_000));
    }

    #[test]
    fn no_figure_when_the_kernel_has_none_for_the_whole_handshake() {
        let full = info(TCP_ESTABLISHED, 137, 0);
        assert_eq!(
            handshake_rtt_ns(&full[..TCP_INFO_LEN - 1]),
            Err(NoKernelRtt::Truncated {
                len: TCP_INFO_LEN - 1
            })
        );
        assert_eq!(
            handshake_rtt_ns(&[]),
            Err(NoKernelRtt::Truncated { len: 0 })
        );
        // SYN_SENT (2): not connected.
        assert_eq!(
            handshake_rtt_ns(&info(2, 137, 0)),
            Err(NoKernelRtt::NotEstablished { state: 2 })
        );
        // A retransmitted SYN: the 1 s timeout is part of the handshake, the sample is not.
        assert_eq!(
            handshake_rtt_ns(&info(TCP_ESTABLISHED, 1_000, 1)),
            Err(NoKernelRtt::Retransmitted { count: 1 })
        );
        assert_eq!(
            handshake_rtt_ns(&info(TCP_ESTABLISHED, 0, 0)),
            Err(NoKernelRtt::NoSample)
        );
    }

    #[test]
    fn the_kernel_figure_wins_only_when_it_fits_inside_the_timed_span() {
        assert_eq!(
            connect_time(270_000, Some(125_000)),
            ConnectTime {
                ns: 125_000,
                source: TcpTimeSource::Kernel
            }
        );
        // Equal is possible at microsecond resolution.
        assert_eq!(
            connect_time(125_000, Some(125_000)).source,
            TcpTimeSource::Kernel
        );
        assert_eq!(
            connect_time(100_000, Some(125_000)),
            ConnectTime {
                ns: 100_000,
                source: TcpTimeSource::User
            }
        );
        assert_eq!(
            connect_time(270_000, None),
            ConnectTime {
                ns: 270_000,
                source: TcpTimeSource::User
            }
        );
    }
}
