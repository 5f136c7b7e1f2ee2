//! Image content for the benchmarks that read images from the test registry:
//! filler that compresses like binaries do, layers of many files, and the
//! files that make an image Debian-like.

use crate::registry::{Blob, Compression, Layer};

/// Text-like content (16 symbols): compresses about 2x, like binaries and libraries do.
pub struct Filler(pub u64);

impl Filler {
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                b"abcdefghijklmnop"[(self.0 & 15) as usize]
            })
            .collect()
    }
}

/// A layer of `files` files of `size` bytes under `dir`, plus extra entries.
pub fn layer(fill: &mut Filler, dir: &str, files: usize, size: usize, extra: impl FnOnce(Layer) -> Layer) -> Blob {
    let mut l = extra(Layer::new());
    for i in 0..files {
        l = l.file(&format!("{dir}/{}/file-{i}.so", i % 64), &fill.bytes(size));
    }
    Blob::layer(l.tar(), Compression::Gzip)
}

pub fn debian_base(l: Layer) -> Layer {
    l.symlink("bin", "usr/bin")
        .symlink("sbin", "usr/sbin")
        .file("usr/bin/dash", b"ELF dash")
        .file("usr/bin/bash", b"ELF bash")
        .symlink("usr/bin/sh", "dash")
        .file("usr/bin/apt", b"ELF apt")
        .file("usr/bin/apt-get", b"ELF apt-get")
        .file("usr/bin/dpkg", b"ELF dpkg")
        .file("var/lib/dpkg/status", DPKG_STATUS)
        .file(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/bash\napp:x:10001:10001::/home/app:/usr/sbin/nologin\n",
        )
}

/// A dpkg database as Debian writes it, for the packages of [`debian_base`].
const DPKG_STATUS: &[u8] = b"Package: dash
Status: install ok installed
Priority: required
Section: shells
Installed-Size: 212
Maintainer: Debian Shell Maintainers
Architecture: amd64
Version: 0.5.12-2
Description: POSIX-compliant shell

Package: bash
Status: install ok installed
Priority: required
Section: shells
Installed-Size: 7164
Maintainer: Debian Bash Maintainers
Architecture: amd64
Version: 5.2.15-2+b7
Description: GNU Bourne Again SHell

Package: apt
Status: install ok installed
Priority: required
Section: admin
Installed-Size: 4272
Maintainer: APT Development Team
Architecture: amd64
Version: 2.6.1
Description: commandline package manager

Package: dpkg
Status: install ok installed
Priority: required
Section: admin
Installed-Size: 6552
Maintainer: Dpkg Developers
Architecture: amd64
Version: 1.21.22
Description: Debian package management system
";
