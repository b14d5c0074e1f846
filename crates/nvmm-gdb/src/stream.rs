//! Where the debugger connects: a TCP port or a Unix socket.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::str::FromStr;

use crate::Error;

/// A listening address: `HOST:PORT` (TCP; `:PORT` for localhost) or
/// `unix:PATH`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A Unix socket path.
    Unix(PathBuf),
}

impl FromStr for Address {
    type Err = Error;

    fn from_str(s: &str) -> Result<Address, Error> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(Error::BadAddress { address: s.to_string() });
            }
            return Ok(Address::Unix(PathBuf::from(path)));
        }
        let full = if s.starts_with(':') { format!("127.0.0.1{s}") } else { s.to_string() };
        full.parse().map(Address::Tcp).map_err(|_| Error::BadAddress { address: s.to_string() })
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Tcp(a) => write!(f, "{a}"),
            Address::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// A bound listener, waiting for one debugger.
#[derive(Debug)]
pub struct Listener {
    inner: ListenerKind,
}

#[derive(Debug)]
enum ListenerKind {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl Listener {
    /// Binds `address` (a Unix socket path must not exist yet).
    pub fn bind(address: &Address) -> Result<Listener, Error> {
        let io = |source| Error::Listen { address: address.to_string(), source };
        let inner = match address {
            Address::Tcp(a) => ListenerKind::Tcp(TcpListener::bind(a).map_err(io)?),
            Address::Unix(p) => ListenerKind::Unix(UnixListener::bind(p).map_err(io)?, p.clone()),
        };
        Ok(Listener { inner })
    }

    /// The address bound (the port chosen, for port 0).
    pub fn local_address(&self) -> Result<Address, Error> {
        match &self.inner {
            ListenerKind::Tcp(l) => l
                .local_addr()
                .map(Address::Tcp)
                .map_err(|source| Error::Listen { address: "the TCP listener".into(), source }),
            ListenerKind::Unix(_, p) => Ok(Address::Unix(p.clone())),
        }
    }

    /// Waits for the debugger to connect.
    pub fn accept(&self) -> Result<Stream, Error> {
        let io = |source| Error::Accept { source };
        match &self.inner {
            ListenerKind::Tcp(l) => {
                let (s, _) = l.accept().map_err(io)?;
                // Packets are small and answered one at a time.
                s.set_nodelay(true).map_err(io)?;
                Ok(Stream::Tcp(s))
            }
            ListenerKind::Unix(l, _) => Ok(Stream::Unix(l.accept().map_err(io)?.0)),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let ListenerKind::Unix(_, p) = &self.inner {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A debugger's connection.
#[derive(Debug)]
pub enum Stream {
    /// Over TCP.
    Tcp(TcpStream),
    /// Over a Unix socket.
    Unix(UnixStream),
}

impl Stream {
    pub(crate) fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
        })
    }

    /// Ends both directions (wakes the reader thread).
    pub(crate) fn shutdown(&self) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(Shutdown::Both),
            Stream::Unix(s) => s.shutdown(Shutdown::Both),
        };
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Unix(s) => s.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse() {
        assert_eq!(":1234".parse::<Address>().unwrap(), Address::Tcp("127.0.0.1:1234".parse().unwrap()));
        assert_eq!("0.0.0.0:9".parse::<Address>().unwrap(), Address::Tcp("0.0.0.0:9".parse().unwrap()));
        assert_eq!("unix:/tmp/x".parse::<Address>().unwrap(), Address::Unix("/tmp/x".into()));
        assert!("unix:".parse::<Address>().is_err());
        assert!("nonsense".parse::<Address>().is_err());
        assert!(":99999".parse::<Address>().is_err());
    }
}
