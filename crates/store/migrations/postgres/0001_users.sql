-- SIP digest credentials: one HA1 per (user, realm, algorithm). RFC 3261 compares user
-- parts and RFC 7616 realms case-sensitively, as PostgreSQL's text comparison does.
CREATE TABLE stg_users (
    username  VARCHAR(255) NOT NULL,
    realm     VARCHAR(255) NOT NULL,
    algorithm VARCHAR(16)  NOT NULL,
    ha1       VARCHAR(128) NOT NULL,
    PRIMARY KEY (username, realm, algorithm)
);
