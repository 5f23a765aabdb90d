//! NVMe/TCP: PDU codec and queue pairs.
