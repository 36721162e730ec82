-- 卫健委 Health commission: the birth-certificate system (出生医学证明), MariaDB / MySQL.
--
-- The same table as schema.py creates (it is the definition load.py and the tests use, on
-- SQLite, PostgreSQL and MariaDB alike); this file is that schema as a DBA reads it.
-- No NULLs, no foreign keys: "nothing" is coded as ''.
CREATE TABLE CSYXZM (
  ZMBH     VARCHAR(20)  NOT NULL,              -- 证明编号 certificate number
  XSESFZH  VARCHAR(18)  NOT NULL DEFAULT '',   -- 新生儿身份证号 newborn's ID number, '' until registered
  XSEXM    VARCHAR(40)  NOT NULL DEFAULT '',   -- 新生儿姓名 newborn's name
  MQSFZH   VARCHAR(18)  NOT NULL,              -- 母亲身份证号 mother's ID number, 15 or 18 characters
  FQSFZH   VARCHAR(18)  NOT NULL DEFAULT '',   -- 父亲身份证号 father's ID number, 15 or 18, or ''
  CSRQ     CHAR(8)      NOT NULL,              -- 出生日期 birth date YYYYMMDD
  TC       TINYINT      NOT NULL,              -- 胎次 birth order
  QFRQ     CHAR(8)      NOT NULL DEFAULT '',   -- 签发日期 issue date YYYYMMDD, '' while not issued
  JGDM     VARCHAR(18)  NOT NULL DEFAULT '',   -- 机构代码 issuing hospital's institution code
  XZQH     VARCHAR(12)  NOT NULL,              -- 行政区划 district (6) or township (9, 12 digits)
  ZT       CHAR(1)      NOT NULL DEFAULT '1',  -- 状态 status: 1 valid, 0 voided
  SCBZ     CHAR(1)      NOT NULL DEFAULT '0',  -- 删除标志 deleted: 0 no, 1 yes
  PRIMARY KEY (ZMBH),
  KEY IX_XSESFZH (XSESFZH),
  KEY IX_MQSFZH (MQSFZH),
  -- Added for the "parent of" predicate, which looks a person up as mother or father.
  KEY IX_FQSFZH (FQSFZH)
) DEFAULT CHARSET=utf8mb4;

-- The account the adapter connects as: it reads this one table, nothing else.
-- CREATE USER 'tongban_reader'@'10.%' IDENTIFIED BY '...';
-- GRANT SELECT ON birth_registry.CSYXZM TO 'tongban_reader'@'10.%';
