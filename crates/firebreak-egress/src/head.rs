//! Reading one HTTP/1.1 request head, bounded in bytes (the caller bounds it in time), parsed
//! by `httparse`. Whatever follows the head on the wire (a TLS ClientHello sent early, a request
//! body) is kept as `rest`.

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::EgressError;

/// More headers than this is an absurd request (431).
const MAX_HEADERS: usize = 100;

/// A parsed request head.
#[derive(Debug)]
pub(crate) struct Head {
    pub(crate) method: String,
    pub(crate) target: String,
    pub(crate) headers: Vec<(String, Vec<u8>)>,
    /// Bytes read past the head.
    pub(crate) rest: Vec<u8>,
}

impl Head {
    /// Every value of header `name` (case-insensitive).
    pub(crate) fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }
}

pub(crate) async fn read_head<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Head, EgressError> {
    let mut buf: Vec<u8> = Vec::with_capacity(2048.min(max));
    let mut chunk = [0u8; 4096];
    loop {
        let room = max
            .saturating_add(1)
            .saturating_sub(buf.len())
            .min(chunk.len());
        let slot = chunk.get_mut(..room).unwrap_or_default();
        let n = r.read(slot).await.map_err(EgressError::Io)?;
        if n == 0 {
            return Err(EgressError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        buf.extend_from_slice(slot.get(..n).unwrap_or_default());
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(len)) if len <= max => {
                let (Some(method), Some(target), Some(version)) =
                    (req.method, req.path, req.version)
                else {
                    return Err(EgressError::Malformed("incomplete request line"));
                };
                // HTTP/1.0 clients (`curl --proxy1.0`) are served the same way.
                if version > 1 {
                    return Err(EgressError::Malformed("HTTP version"));
                }
                let headers = req
                    .headers
                    .iter()
                    .map(|h| (h.name.to_owned(), h.value.to_vec()))
                    .collect();
                let method = method.to_owned();
                let target = target.to_owned();
                let rest = buf.get(len..).unwrap_or_default().to_vec();
                return Ok(Head {
                    method,
                    target,
                    headers,
                    rest,
                });
            }
            Ok(httparse::Status::Complete(_)) => return Err(EgressError::HeadTooLarge),
            Ok(httparse::Status::Partial) if buf.len() > max => {
                return Err(EgressError::HeadTooLarge);
            }
            Ok(httparse::Status::Partial) => {}
            Err(httparse::Error::TooManyHeaders) => return Err(EgressError::HeadTooLarge),
            Err(_) => return Err(EgressError::Malformed("request head")),
        }
    }
}
