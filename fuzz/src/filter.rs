//! The filter's reader of Envoy's serialized header maps.

use portcullis_filter::headers;

/// Any buffer: no panic, never more entries than announced, and every entry lies in the buffer.
pub fn header_map(data: &[u8]) {
    let announced = headers::count(data);
    let mut entries = 0;
    for (name, value) in headers::entries(data) {
        entries += 1;
        assert!(
            name.len() + value.len() < data.len(),
            "entry longer than the buffer"
        );
    }
    assert!(entries <= announced, "more entries than announced");
    let request = headers::request(data.to_vec()).build();
    assert!(
        request.headers().count() <= entries,
        "request has invented headers"
    );
    let _ = (
        request.method(),
        request.path(),
        request.query(),
        request.authority(),
    );
}
