"""GB/T 2260 region codes: province prefixes for validation, and the districts we generate into.

Validation checks only the province prefix: ID numbers keep the region code that was valid
when they were issued, and codes are retired over time, so a full current table would reject
real, valid numbers.
"""

from __future__ import annotations

__all__ = ["DISTRICTS", "PROVINCES", "district_name", "province_of"]

PROVINCES: dict[str, str] = {
    "11": "北京市", "12": "天津市", "13": "河北省", "14": "山西省", "15": "内蒙古自治区",
    "21": "辽宁省", "22": "吉林省", "23": "黑龙江省", "31": "上海市", "32": "江苏省",
    "33": "浙江省", "34": "安徽省", "35": "福建省", "36": "江西省", "37": "山东省",
    "41": "河南省", "42": "湖北省", "43": "湖南省", "44": "广东省", "45": "广西壮族自治区",
    "46": "海南省", "50": "重庆市", "51": "四川省", "52": "贵州省", "53": "云南省",
    "54": "西藏自治区", "61": "陕西省", "62": "甘肃省", "63": "青海省", "64": "宁夏回族自治区",
    "65": "新疆维吾尔自治区", "71": "台湾省", "81": "香港特别行政区", "82": "澳门特别行政区",
}  # fmt: skip

# Real county-level codes. The synthetic province is Inner Mongolia (15); two Beijing
# districts give the generator people who live outside it.
DISTRICTS: dict[str, str] = {
    "150102": "呼和浩特市新城区",
    "150105": "呼和浩特市赛罕区",
    "150203": "包头市昆都仑区",
    "150403": "赤峰市元宝山区",
    "150602": "鄂尔多斯市东胜区",
    "150622": "鄂尔多斯市准格尔旗",
    "110105": "北京市朝阳区",
    "110108": "北京市海淀区",
}


def province_of(region: str) -> str | None:
    return PROVINCES.get(region[:2])


def district_name(region: str) -> str | None:
    return DISTRICTS.get(region)
