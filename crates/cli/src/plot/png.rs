//! A minimal PNG writer for the sweep plots: 8-bit palette images, one zlib stream of fixed-Huffman
//! deflate (run / previous-row matches), CRC-32 per chunk and Adler-32. Std only, deterministic.

pub(super) fn crc32(data: &[u8]) -> u32 {
    let mut table = [0u32; 256];
    for (n, t) in table.iter_mut().enumerate() {
        let mut c = n as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
        }
        *t = c;
    }
    !data.iter().fold(!0u32, |c, &b| table[((c ^ b as u32) & 0xFF) as usize] ^ (c >> 8))
}

pub(super) fn adler32(data: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for chunk in data.chunks(5552) {
        for &x in chunk {
            a += x as u32;
            b += a;
        }
        a %= 65521;
        b %= 65521;
    }
    (b << 16) | a
}

/// Length (257..285) and distance code tables of RFC 1951.
const LBASE: [u16; 29] = [
    3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195,
    227, 258,
];
const LEXT: [u8; 29] =
    [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0];
const DBASE: [u16; 30] = [
    1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537, 2049, 3073,
    4097, 6145, 8193, 12289, 16385, 24577,
];
const DEXT: [u8; 30] =
    [0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13];

/// LSB-first bit writer.
struct Bits {
    out: Vec<u8>,
    acc: u64,
    n: u32,
}
impl Bits {
    fn put(&mut self, v: u32, n: u32) {
        self.acc |= (v as u64) << self.n;
        self.n += n;
        while self.n >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.n -= 8;
        }
    }
    /// Huffman codes go MSB first.
    fn code(&mut self, c: u32, len: u32) {
        self.put(c.reverse_bits() >> (32 - len), len);
    }
    fn lit(&mut self, s: u32) {
        match s {
            0..=143 => self.code(0x30 + s, 8),
            144..=255 => self.code(0x190 + s - 144, 9),
            256..=279 => self.code(s - 256, 7),
            _ => self.code(0xC0 + s - 280, 8),
        }
    }
}

/// One final fixed-Huffman deflate block; LZ77 matches only at distance 1
/// (runs) and `stride` (the same bytes one image row up).
pub(super) fn deflate(data: &[u8], stride: usize) -> Vec<u8> {
    let mut bw = Bits { out: Vec::new(), acc: 0, n: 0 };
    bw.put(1, 1); // BFINAL
    bw.put(1, 2); // BTYPE = 01, fixed Huffman
    let mut i = 0;
    while i < data.len() {
        let (mut len, mut dist) = (0, 0);
        for d in [1, stride] {
            if d == 0 || d > 32768 || i < d {
                continue;
            }
            let mut l = 0;
            while l < 258 && i + l < data.len() && data[i + l] == data[i + l - d] {
                l += 1;
            }
            if l > len {
                (len, dist) = (l, d);
            }
        }
        if len >= 3 {
            let k = LBASE.iter().rposition(|&b| b as usize <= len).unwrap_or(0);
            bw.lit(257 + k as u32);
            bw.put((len - LBASE[k] as usize) as u32, LEXT[k] as u32);
            let k = DBASE.iter().rposition(|&b| b as usize <= dist).unwrap_or(0);
            bw.code(k as u32, 5);
            bw.put((dist - DBASE[k] as usize) as u32, DEXT[k] as u32);
            i += len;
        } else {
            bw.lit(data[i] as u32);
            i += 1;
        }
    }
    bw.lit(256);
    bw.put(0, 7); // flush the last partial byte
    bw.out
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// 8-bit palette PNG from row-major palette indices (`w * h` of them).
pub(super) fn encode_png(w: u32, h: u32, palette: &[[u8; 3]], idx: &[u8]) -> Vec<u8> {
    let mut raw = Vec::with_capacity((w as usize + 1) * h as usize);
    for row in idx.chunks(w.max(1) as usize) {
        raw.push(0);
        raw.extend_from_slice(row);
    }
    let mut z = vec![0x78, 0x01];
    z.extend(deflate(&raw, w as usize + 1));
    z.extend_from_slice(&adler32(&raw).to_be_bytes());
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = [0u8; 13];
    ihdr[..4].copy_from_slice(&w.to_be_bytes());
    ihdr[4..8].copy_from_slice(&h.to_be_bytes());
    ihdr[8..].copy_from_slice(&[8, 3, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"PLTE", &palette.concat());
    chunk(&mut out, b"IDAT", &z);
    chunk(&mut out, b"IEND", &[]);
    out
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Minimal zlib inflater for stored and fixed-Huffman blocks.
    pub(crate) fn inflate(z: &[u8]) -> Option<Vec<u8>> {
        if z.len() < 6 || z[0] & 0x0F != 8 || (z[0] as u16 * 256 + z[1] as u16) % 31 != 0 {
            return None;
        }
        let d = &z[2..z.len() - 4];
        let mut pos = 0usize; // bit position
        let mut bit = || -> Option<u32> {
            let b = (*d.get(pos / 8)? >> (pos % 8)) & 1;
            pos += 1;
            Some(b as u32)
        };
        let mut out: Vec<u8> = Vec::new();
        loop {
            let last = bit()?;
            let ty = bit()? | bit()? << 1;
            let mut bits = |n: u8| -> Option<u32> { (0..n).try_fold(0, |a, i| Some(a | bit()? << i)) };
            match ty {
                0 => return None, // stored blocks are not produced (would need byte alignment)
                1 => loop {
                    let mut c = 0u32;
                    let mut sym = None;
                    for l in 1..=9 {
                        c = c << 1 | bits(1)?;
                        sym = match (l, c) {
                            (7, 0..=0x17) => Some(256 + c),
                            (8, 0x30..=0xBF) => Some(c - 0x30),
                            (8, 0xC0..=0xC7) => Some(280 + c - 0xC0),
                            (9, 0x190..=0x1FF) => Some(144 + c - 0x190),
                            _ => None,
                        };
                        if sym.is_some() {
                            break;
                        }
                    }
                    let s = sym? as usize;
                    if s < 256 {
                        out.push(s as u8);
                        continue;
                    }
                    if s == 256 {
                        break;
                    }
                    let len = LBASE[s - 257] as usize + bits(LEXT[s - 257])? as usize;
                    let dc = (0..5).try_fold(0u32, |a, _| Some(a << 1 | bits(1)?))? as usize;
                    let dist = DBASE[dc] as usize + bits(DEXT[dc])? as usize;
                    if dist > out.len() {
                        return None;
                    }
                    for _ in 0..len {
                        out.push(out[out.len() - dist]);
                    }
                },
                _ => return None,
            }
            if last == 1 {
                break;
            }
        }
        (adler32(&out).to_be_bytes()[..] == z[z.len() - 4..]).then_some(out)
    }

    /// Checks structure and CRCs; returns (width, height, decompressed IDAT).
    pub(crate) fn check_png(b: &[u8]) -> (usize, usize, Vec<u8>) {
        assert_eq!(&b[..8], b"\x89PNG\r\n\x1a\n");
        let (mut i, mut kinds, mut idat, mut wh) = (8, Vec::new(), Vec::new(), (0, 0));
        while i < b.len() {
            let n = u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]) as usize;
            let body = &b[i + 4..i + 8 + n];
            let crc = u32::from_be_bytes([b[i + 8 + n], b[i + 9 + n], b[i + 10 + n], b[i + 11 + n]]);
            assert_eq!(crc32(body), crc);
            let kind = String::from_utf8_lossy(&body[..4]).to_string();
            if kind == "IHDR" {
                wh = (
                    u32::from_be_bytes([body[4], body[5], body[6], body[7]]) as usize,
                    u32::from_be_bytes([body[8], body[9], body[10], body[11]]) as usize,
                );
            }
            if kind == "IDAT" {
                idat.extend_from_slice(&body[4..]);
            }
            kinds.push(kind);
            i += 12 + n;
        }
        assert_eq!(kinds, ["IHDR", "PLTE", "IDAT", "IEND"]);
        let raw = inflate(&idat).expect("zlib stream decodes");
        assert_eq!(raw.len(), wh.1 * (1 + wh.0));
        assert!(raw.chunks(wh.0 + 1).all(|r| r[0] == 0));
        (wh.0, wh.1, raw)
    }

    #[test]
    fn checksums_known_values() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(adler32(b"Wikipedia"), 0x11E6_0398);
        let data: Vec<u8> = (0..5000u32).map(|i| (i * i % 7 + i / 900) as u8).collect();
        let mut z = vec![0x78, 0x01];
        z.extend(deflate(&data, 61));
        z.extend_from_slice(&adler32(&data).to_be_bytes());
        assert_eq!(inflate(&z), Some(data));
    }
}
