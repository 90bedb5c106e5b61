
#[cfg(test)]
mod tests {
    use super::*;

    /// Both ways of opening beneath (openat2, and the per-component chain older kernels get)
    /// refuse a symlink in any component and `.`/`..`, and reach plain directories.
    #[test]
    fn dir_never_follows_a_symlink_in_any_component() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::os::unix::fs::symlink(root.join("a"), root.join("link")).unwrap();
        std::os::unix::fs::symlink("b", root.join("a/lnk")).unwrap();
        let top = DirFd::open(&root).unwrap();
        for chain in [false, true] {
            NO_OPENAT2.store(chain, Ordering::Relaxed);
            let b = top.dir(b"a/b").unwrap();
            b.mkdir(b"c", 0o700).unwrap();
            b.remove(b"c", true).unwrap();
            for through in [&b"link/b"[..], b"a/lnk", b"link"] {
                let e = top.dir(through).err().unwrap();
                assert!(swapped(&e), "{chain} {through:?}: {e}");
            }
            for bad in [&b"a/../a"[..], b"./a", b"a//b", b"a/"] {
                let e = top.dir(bad).err().unwrap();
                assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
            }
            assert!(top.remove(b"..", true).is_err());
        }
        NO_OPENAT2.store(false, Ordering::Relaxed);
    }
}
