pub mod clients;
pub mod demo;
pub mod image;
pub mod initrd;
pub mod initrd_install;
pub mod serve;
pub mod tftp;
pub mod vm;
