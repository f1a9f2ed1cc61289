//! Slice arithmetic: which fixed, aligned slices cover a byte range, and which part of each.

/// Slice geometry for one slice size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SliceMath {
    size: u64,
}

/// One slice's share of a request: slice `index`, bytes `skip..skip + take` of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlicePart {
    pub index: u64,
    pub skip: usize,
    pub take: usize,
}

impl SliceMath {
    /// Slices of `size` bytes (clamped to at least 4 KiB).
    pub fn new(size: u64) -> Self {
        Self {
            size: size.max(4096),
        }
    }

    /// The slice size.
    pub fn slice_size(&self) -> u64 {
        self.size
    }

    /// Offset and length of slice `index` in an object of `object_len` bytes.
    pub fn bounds(&self, index: u64, object_len: u64) -> (u64, u64) {
        let start = index * self.size;
        (start, self.size.min(object_len.saturating_sub(start)))
    }

    /// The parts of slices covering `len` bytes from `offset`, in order.
    pub fn parts(&self, offset: u64, len: u64) -> impl Iterator<Item = SlicePart> + use<> {
        let size = self.size;
        let end = offset + len; // exclusive
        let first = offset / size;
        let last = if len == 0 { first } else { (end - 1) / size };
        (first..=last).filter(move |_| len > 0).map(move |index| {
            let slice_start = index * size;
            let from = offset.max(slice_start);
            let to = end.min(slice_start + size);
            SlicePart {
                index,
                skip: (from - slice_start) as usize,
                take: (to - from) as usize,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_cover_the_range_exactly() {
        let m = SliceMath::new(4096);
        for (offset, len) in [
            (0, 1),
            (0, 4096),
            (4095, 2),
            (100, 10_000),
            (8192, 4096),
            (5, 0),
        ] {
            let parts: Vec<SlicePart> = m.parts(offset, len).collect();
            let total: usize = parts.iter().map(|p| p.take).sum();
            assert_eq!(total as u64, len, "{offset}+{len}");
            let mut pos = offset;
            for p in &parts {
                assert_eq!(p.index * 4096 + p.skip as u64, pos);
                assert!(p.skip + p.take <= 4096);
                pos += p.take as u64;
            }
        }
    }

    #[test]
    fn last_slice_is_short() {
        let m = SliceMath::new(4096);
        assert_eq!(m.bounds(0, 10_000), (0, 4096));
        assert_eq!(m.bounds(2, 10_000), (8192, 1808));
        assert_eq!(m.bounds(3, 10_000), (12_288, 0));
        assert_eq!(SliceMath::new(1).slice_size(), 4096);
    }
}
