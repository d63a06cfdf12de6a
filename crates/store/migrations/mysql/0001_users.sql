-- SIP digest credentials: one HA1 per (user, realm, algorithm). RFC 3261 compares user
-- parts and RFC 7616 realms case-sensitively: binary collation (MariaDB's default is not).
CREATE TABLE stg_users (
    username  VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    realm     VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    algorithm VARCHAR(16)  CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    ha1       VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    PRIMARY KEY (username, realm, algorithm)
) ENGINE=InnoDB;
