-- PostgreSQL form of ../0011_sealed_keys.sql.
-- Content keys sealed under a master key (AES-256-GCM, bound to the file id); the clear
-- key_hex and iv_hex columns are emptied once a key is sealed.
ALTER TABLE renditions ADD COLUMN sealed_key TEXT;
