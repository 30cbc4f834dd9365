//! Requests exactly as written, for the spellings an HTTP library would tidy up first: dot
//! segments and odd escapes in the path, absolute-form targets, an HTTP/2 `:scheme` that does
//! not match the connection. HTTP/1.1 over a plain socket, and a minimal HTTP/2 cleartext
//! (prior knowledge) client that sends one request and reads its answer.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::stack::Reply;

const TIMEOUT: Duration = Duration::from_secs(10);

/// Sends `head` (request line and header lines, without the final blank line) to
/// `127.0.0.1:port` with `Connection: close`, and reads the whole answer.
pub fn http1(port: u16, head: &str) -> Reply {
    let mut conn = TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("connecting to 127.0.0.1:{port}: {e}"));
    conn.set_read_timeout(Some(TIMEOUT)).expect("read timeout");
    let request = format!("{}\r\nconnection: close\r\n\r\n", head.trim_end());
    conn.write_all(request.as_bytes())
        .unwrap_or_else(|e| panic!("sending {head:?}: {e}"));
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("reading the answer to {head:?}: {e}"));
    parse_http1(&raw).unwrap_or_else(|| {
        panic!(
            "not an HTTP/1 answer to {head:?}: {:?}",
            String::from_utf8_lossy(&raw)
        )
    })
}

/// Like [`http1`], with a chunked body sent as `pieces`, each written (and pushed onto the wire)
/// on its own a moment after the previous one, so the proxy most likely reads them one by one
/// (what a test asserts must hold however they are read).
pub fn http1_chunked(port: u16, head: &str, pieces: &[&[u8]]) -> Reply {
    let mut conn = TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("connecting to 127.0.0.1:{port}: {e}"));
    conn.set_read_timeout(Some(TIMEOUT)).expect("read timeout");
    conn.set_nodelay(true).expect("nodelay");
    let request = format!(
        "{}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
        head.trim_end()
    );
    conn.write_all(request.as_bytes())
        .unwrap_or_else(|e| panic!("sending {head:?}: {e}"));
    // The proxy may answer (and close) before the body ends, e.g. past a size bound: then
    // stop writing and read what it said.
    let mut sent = true;
    for (i, piece) in pieces.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut chunk = format!("{:x}\r\n", piece.len()).into_bytes();
        chunk.extend_from_slice(piece);
        chunk.extend_from_slice(b"\r\n");
        if conn.write_all(&chunk).and_then(|()| conn.flush()).is_err() {
            sent = false;
            break;
        }
    }
    if sent {
        let _ = conn.write_all(b"0\r\n\r\n");
    }
    let mut raw = Vec::new();
    if let Err(e) = conn.read_to_end(&mut raw)
        && raw.is_empty()
    {
        panic!("reading the answer to {head:?}: {e}");
    }
    parse_http1(&raw).unwrap_or_else(|| {
        panic!(
            "not an HTTP/1 answer to {head:?}: {:?}",
            String::from_utf8_lossy(&raw)
        )
    })
}

fn parse_http1(raw: &[u8]) -> Option<Reply> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let mut headers = reqwest::header::HeaderMap::new();
    for line in lines {
        let (k, v) = line.split_once(':')?;
        headers.append(
            reqwest::header::HeaderName::from_bytes(k.trim().as_bytes()).ok()?,
            reqwest::header::HeaderValue::from_str(v.trim()).ok()?,
        );
    }
    let chunked = headers
        .get("transfer-encoding")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    if chunked {
        body = dechunk(&body)?;
    }
    Some(Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&b[..eol]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        b = &b[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

/// What an HTTP/2 request got: the status when the encoder sent it in a form this client reads
/// (static-table index, or a literal that is not Huffman-coded), and the body.
#[derive(Debug)]
pub struct H2Reply {
    pub status: Option<u16>,
    pub body: String,
}

/// One HTTP/2 request over cleartext with prior knowledge. `headers` are sent as given, in order,
/// pseudo-headers included (`:method`, `:scheme`, `:authority`, `:path`), as HPACK literals.
pub fn h2c(port: u16, headers: &[(&str, &str)]) -> H2Reply {
    let mut conn = TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("connecting to 127.0.0.1:{port}: {e}"));
    conn.set_read_timeout(Some(TIMEOUT)).expect("read timeout");
    let mut block = Vec::new();
    for (name, value) in headers {
        // Literal header field without indexing, new name.
        block.push(0);
        hpack_string(&mut block, name.as_bytes());
        hpack_string(&mut block, value.as_bytes());
    }
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    frame(&mut out, 4, 0, 0, &[]);
    // END_STREAM | END_HEADERS on stream 1.
    frame(&mut out, 1, 0x5, 1, &block);
    conn.write_all(&out).expect("sending the HTTP/2 request");
    let mut status = None;
    let mut body = Vec::new();
    loop {
        let mut head = [0u8; 9];
        if conn.read_exact(&mut head).is_err() {
            break;
        }
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let (kind, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes([head[5] & 0x7f, head[6], head[7], head[8]]);
        let mut payload = vec![0u8; len];
        conn.read_exact(&mut payload)
            .expect("reading an HTTP/2 frame");
        match (kind, stream) {
            // SETTINGS from the server: acknowledge.
            (4, 0) if flags & 1 == 0 => {
                let mut ack = Vec::new();
                frame(&mut ack, 4, 1, 0, &[]);
                conn.write_all(&ack).expect("acknowledging SETTINGS");
            }
            (1, 1) => {
                status = status.or_else(|| hpack_status(&payload));
                if flags & 1 != 0 {
                    break;
                }
            }
            (0, 1) => {
                body.extend_from_slice(&payload);
                if flags & 1 != 0 {
                    break;
                }
            }
            // RST_STREAM on ours, or GOAWAY.
            (3, 1) | (7, _) => break,
            _ => {}
        }
    }
    H2Reply {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = payload.len();
    out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// An HPACK string literal, not Huffman-coded (RFC 7541 §5.2).
fn hpack_string(out: &mut Vec<u8>, s: &[u8]) {
    let mut n = s.len();
    if n < 127 {
        out.push(n as u8);
    } else {
        out.push(127);
        n -= 127;
        while n >= 128 {
            out.push((n % 128 + 128) as u8);
            n /= 128;
        }
        out.push(n as u8);
    }
    out.extend_from_slice(s);
}

/// `:status` if the header block starts with it in a form read without a Huffman decoder.
fn hpack_status(block: &[u8]) -> Option<u16> {
    let first = *block.first()?;
    let indexed = [
        (0x88, 200),
        (0x89, 204),
        (0x8a, 206),
        (0x8b, 304),
        (0x8c, 400),
        (0x8d, 404),
        (0x8e, 500),
    ];
    if let Some((_, s)) = indexed.iter().find(|(b, _)| *b == first) {
        return Some(*s);
    }
    // Literal with incremental indexing / without indexing / never indexed, name index 8..14.
    let name_index = matches!(first, 0x48..=0x4e | 0x08..=0x0e | 0x18..=0x1e);
    let len = *block.get(1)?;
    if !name_index || len & 0x80 != 0 {
        return None;
    }
    std::str::from_utf8(block.get(2..2 + usize::from(len))?)
        .ok()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http1_answers_with_length_or_chunks() {
        let r = parse_http1(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi").unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "hi"));
        let r = parse_http1(
            b"HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n2\r\nab\r\n1\r\nc\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_str()), (404, "abc"));
    }

    #[test]
    fn hpack_status_forms() {
        assert_eq!(hpack_status(&[0x88]), Some(200));
        assert_eq!(hpack_status(&[0x48, 3, b'4', b'0', b'1']), Some(401));
        assert_eq!(hpack_status(&[0x48, 0x82, 0, 0]), None);
    }
}
