//! Tests of the codec bench.

use super::*;

fn mails(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            format!(
                "Received: from mx{i}.example.org\r\nSubject: note {i}\r\n\r\n{}\r\n",
                "Hello, this is a line of text that repeats.\r\n".repeat(20 + i % 7)
            )
            .into_bytes()
        })
        .collect()
}

#[test]
fn tunnel_delivers_every_byte_and_compresses() {
    let m = mails(30);
    let raw: usize = m.iter().map(Vec::len).sum();
    for codec in [LinkCodec::Cm, LinkCodec::Zstd] {
        let cfg = |role| {
            let mut c = session_config(role, &SessionOptions::default());
            set_codec(&mut c, role, codec);
            c
        };
        let r = run_tunnel(&m, &cfg, bench_link(1920, Duration::from_millis(500))).unwrap();
        assert_eq!(r.raw_bytes as usize, raw);
        assert!(r.wire_bytes * 5 < r.raw_bytes, "{r:?}");
        assert_eq!(
            r.wire_bytes_with_noise,
            r.wire_bytes + r.records * NOISE_OVERHEAD as u64
        );
        assert!(r.server_codec_memory_bytes > 0 && r.client_codec_memory_bytes > 0);
    }
}

#[test]
fn deflate_flushes_cost_bytes() {
    let m = mails(30);
    let flushed = deflate_stream_bytes(&m).unwrap();
    let whole = deflate_stream_bytes(&[m.concat()]).unwrap();
    assert!(flushed > whole, "{flushed} vs {whole}");
}

#[test]
fn corpus_loads_txt_in_name_order() {
    let dir = std::env::temp_dir().join(format!("straw-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("b.txt"), "second").unwrap();
    std::fs::write(dir.join("a.txt"), "first").unwrap();
    std::fs::write(dir.join("a.json"), "skip").unwrap();
    let c = load_corpus(&dir).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(c, vec![b"first".to_vec(), b"second".to_vec()]);
    assert!(parse_dict("bogus").is_err());
    assert!(parse_dict("none").unwrap().is_none());
}
