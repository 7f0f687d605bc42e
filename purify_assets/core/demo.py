"""The generated demo dataset: three small batches of mixed instruction data with planted problems.

Everything here is produced by this module from templates and small vocabularies written for
purify (no text copied from any dataset). Standard library only.

``write_demo_batches(folder, seed=0, rows_per_batch=240) -> list[Path]`` writes, byte-for-byte
deterministic for a given ``seed``:

- ``demo_batch_1.jsonl``  instruction / input / output layout, one JSON object per line
- ``demo_batch_2.json``   a JSON array of prompt / completion objects
- ``demo_batch_3.csv``    question / answer layout with a header row

Every record also carries ``task_type`` (the ground-truth label, one of ``DEMO_TASK_TYPES``) and
``lang`` (``ko``, ``en`` or ``zh``: the language the instruction is written in; for translation the
output is in another language). Each file holds exactly ``rows_per_batch`` records; the JSONL file
additionally holds the malformed lines. In the prompt/completion and question/answer layouts the
prompt (question) is the instruction, a blank line, then the input.

Task types, modelled on the seed's Korean instruction set: summarization, question answering,
sentence ordering, last-sentence prediction, mask prediction (fill the blank), translation and
sentiment classification. Rows of one task type and language share a handful of instruction
templates (three per task per language) and vary in content: seven short story scenarios with
slots (names, places, times, dishes, topics ...) and a set of product/place reviews. Languages
are assigned in fixed proportions: Korean 50 %, English 30 %, Chinese 20 % of the template rows.
The template rows are all distinct from each other (checked), so the exact duplicates are exactly
the planted ones.

Planted problems for the default ``rows_per_batch=240`` (``DEMO_PLANTED``; ``demo_planted(n)``
gives the figures for another size). Every planted problem sits on its own row: no row carries
two of them, and duplicates are copies of otherwise clean rows.

- ``exact_duplicate_copies``: 36 -- extra copies of a clean row (720 rows, 5 %); of these
- ``within_batch_duplicates``: 30 -- 10 per batch, copy in the same file as its original
- ``cross_batch_duplicates``: 6 -- rows of batch 2 repeated verbatim in batch 3 (prompt ->
  question, completion -> answer, so they map to identical rows)
- ``cross_layout_copies``: 4 -- batch 1 rows restated in batch 2's prompt/completion layout
  (same content, different layout: near/semantic duplicates, not exact ones)
- ``empty_outputs``: 6 -- 2 per batch, one ``""`` and one whitespace-only
- ``null_like_inputs``: 6 -- JSONL only (the only layout with an input field): ``<noinput>``,
  ``N/A`` and ``""`` twice each, on rows whose instruction needs an input
- ``html_junk``: 12 -- 4 per batch: ``<p>..</p>``, ``<br/>`` between sentences, ``&nbsp;``,
  ``<div class="article-body"><span>..</span></div>``
- ``control_chars``: 9 -- 3 per batch: zero-width space inside the instruction; BOM and
  zero-width joiner in the output; BEL and ESC control characters in the input
- ``pii_rows``: 9 -- 3 per batch (one e-mail only, one phone only, one both), a contact
  sentence appended to the input of a summarization, sentiment or translation row, so
- ``pii_emails``: 6 -- fake addresses ``userNNN@example.com``
- ``pii_phones``: 6 -- fake Korean mobile numbers ``010-NNNN-NNNN``
- ``output_equals_input``: 6 -- 2 per batch (JSONL: output = input; other layouts:
  completion/answer = prompt/question)
- ``too_short``: 9 -- 3 per batch (one per language), e.g. instruction ``번역``, output ``Hi``
- ``malformed_jsonl_lines``: 3 -- JSONL only: a truncated JSON object, a bare text line and a
  Python-style dict with single quotes; the JSON array and the CSV are always valid

Also: ``demo_rows(seed, rows_per_batch)`` returns the records without writing files (malformed
JSONL lines excluded); ``demo_planted(rows_per_batch)`` the planted counts for that size.
Run ``python -m purify_assets.core.demo FOLDER [--seed N] [--rows N]`` to write the files.
"""

from __future__ import annotations

import csv
import io
import json
import random
import re
from pathlib import Path
from typing import Any

DEMO_TASK_TYPES: tuple[str, ...] = (
    "summarization",
    "question_answering",
    "sentence_ordering",
    "last_sentence_prediction",
    "mask_prediction",
    "translation",
    "sentiment_classification",
)
DEMO_LANGS: tuple[str, ...] = ("ko", "en", "zh")
DEMO_LANG_SHARES: dict[str, float] = {"ko": 0.5, "en": 0.3, "zh": 0.2}
DEMO_FILE_NAMES: tuple[str, ...] = ("demo_batch_1.jsonl", "demo_batch_2.json", "demo_batch_3.csv")
MIN_ROWS_PER_BATCH = 60

_LI = {"ko": 0, "en": 1, "zh": 2}
_PROMPT_SEP = "\n\n"

# ---------------------------------------------------------------------------------------------
# Vocabulary: (korean, english, chinese) triples, so any sentence can be rendered in all three
# languages (which is what the translation rows need).
# ---------------------------------------------------------------------------------------------

# name triples plus the language the name is native to (non-translation rows use native names)
_NAMES: list[tuple[str, str, str, str]] = [
    ("민수", "Minsu", "敏洙", "ko"), ("지현", "Jihyun", "智贤", "ko"), ("서연", "Seoyeon", "瑞妍", "ko"),
    ("준호", "Junho", "俊浩", "ko"), ("하은", "Haeun", "夏恩", "ko"), ("도윤", "Doyun", "道允", "ko"),
    ("엠마", "Emma", "艾玛", "en"), ("리암", "Liam", "利亚姆", "en"), ("올리비아", "Olivia", "奥利维亚", "en"),
    ("노아", "Noah", "诺亚", "en"), ("소피아", "Sophia", "索菲亚", "en"),
    ("리화", "Li Hua", "李华", "zh"), ("왕팡", "Wang Fang", "王芳", "zh"), ("장웨이", "Zhang Wei", "张伟", "zh"),
    ("류양", "Liu Yang", "刘洋", "zh"), ("천징", "Chen Jing", "陈静", "zh"),
]

_VOCAB: dict[str, list[tuple[str, str, str]]] = {
    "time": [
        ("토요일 아침에", "on Saturday morning", "星期六早上"),
        ("월요일 오후에", "on Monday afternoon", "星期一下午"),
        ("어제 저녁에", "yesterday evening", "昨天晚上"),
        ("방학 첫날에", "on the first day of the holiday", "假期第一天"),
        ("퇴근 후에", "after work", "下班后"),
        ("일요일 점심에", "on Sunday at noon", "星期天中午"),
    ],
    "topic": [
        ("천문학", "astronomy", "天文学"), ("한국 역사", "Korean history", "韩国历史"),
        ("기후 변화", "climate change", "气候变化"), ("인공지능", "artificial intelligence", "人工智能"),
        ("심리학", "psychology", "心理学"), ("해양 생물", "marine life", "海洋生物"),
    ],
    "dish": [
        ("김치찌개", "kimchi stew", "泡菜汤"), ("된장찌개", "soybean paste stew", "大酱汤"),
        ("볶음밥", "fried rice", "炒饭"), ("잡채", "glass noodles", "杂菜"), ("카레", "curry", "咖喱"),
        ("떡볶이", "spicy rice cakes", "炒年糕"),
    ],
    "ingredient": [
        ("돼지고기", "pork", "猪肉"), ("두부", "tofu", "豆腐"), ("달걀", "eggs", "鸡蛋"),
        ("새우", "shrimp", "虾"), ("버섯", "mushrooms", "蘑菇"),
    ],
    "distance": [
        ("5킬로미터", "five kilometres", "五公里"), ("3킬로미터", "three kilometres", "三公里"),
        ("10킬로미터", "ten kilometres", "十公里"), ("7킬로미터", "seven kilometres", "七公里"),
    ],
    "city": [
        ("서울", "Seoul", "首尔"), ("부산", "Busan", "釜山"), ("경주", "Gyeongju", "庆州"),
        ("베이징", "Beijing", "北京"), ("런던", "London", "伦敦"), ("상하이", "Shanghai", "上海"),
    ],
    "exhibit": [
        ("고대 도자기", "ancient pottery", "古代陶瓷"), ("전통 의상", "traditional clothing", "传统服饰"),
        ("공룡 화석", "dinosaur fossils", "恐龙化石"), ("옛 지도", "old maps", "古地图"),
        ("인쇄술의 역사", "the history of printing", "印刷术的历史"),
    ],
    "project": [
        ("모바일 앱", "mobile app", "手机应用"), ("웹사이트 개편", "website redesign", "网站改版"),
        ("고객 설문", "customer survey", "客户调查"), ("데이터 분석", "data analysis", "数据分析"),
        ("사내 교육", "staff training", "员工培训"),
    ],
    "day": [
        ("금요일", "Friday", "星期五"), ("수요일", "Wednesday", "星期三"),
        ("월말", "the last day of the month", "月底"),
    ],
    "scenery": [
        ("들판", "fields", "田野"), ("산", "mountains", "群山"), ("바다", "sea", "大海"), ("강", "river", "河流"),
    ],
    "plant": [
        ("상추", "lettuce", "生菜"), ("바질", "basil", "罗勒"), ("시금치", "spinach", "菠菜"),
        ("깻잎", "perilla", "紫苏"), ("방울토마토", "cherry tomato", "小番茄"),
    ],
}

# Story scenarios: four sentences in a fixed order, a one-sentence summary, question/answer
# pairs, and the slots that mask-prediction rows may hide. ``{slot|은}`` appends the Korean
# particle that fits the word (은/는, 이/가, 을/를, 과/와, 으로/로).
_SCENARIOS: list[dict[str, Any]] = [
    {
        "slots": ["time", "topic"],
        "sentences": [
            ("{time} {name|은} 도서관에 갔다.", "{time}, {name} went to the library.", "{time}，{name}去了图书馆。"),
            ("{name|은} {topic}에 관한 책을 두 권 빌렸다.", "{name} borrowed two books about {topic}.",
             "{name}借了两本关于{topic}的书。"),
            ("창가 자리에 앉은 {name|은} 세 시간 동안 책을 읽으며 노트를 정리했다.",
             "Sitting by the window, {name} read for three hours and took notes.",
             "{name}坐在窗边读了三个小时，还做了笔记。"),
            ("집에 돌아온 뒤 {name|은} 배운 내용을 동생에게 설명해 주었다.",
             "Back home, {name} explained the new ideas to a younger brother.",
             "回家后，{name}把学到的内容讲给弟弟听。"),
        ],
        "summary": ("{name|은} 도서관에서 {topic}에 관한 책을 읽고 배운 내용을 동생에게 설명했다.",
                    "{name} studied {topic} at the library and later explained it to a younger brother.",
                    "{name}在图书馆学习了{topic}，回家后讲给弟弟听。"),
        "qa": [
            (("{name|은} 어디에 갔나요?", "Where did {name} go?", "{name}去了哪里？"),
             ("도서관에 갔습니다.", "To the library.", "图书馆。")),
            (("{name|은} 무엇에 관한 책을 빌렸나요?", "What were the books {name} borrowed about?",
              "{name}借的书是关于什么的？"),
             ("{topic}에 관한 책입니다.", "They were about {topic}.", "关于{topic}。")),
            (("{name|은} 책을 얼마 동안 읽었나요?", "How long did {name} read?", "{name}读了多长时间？"),
             ("세 시간 동안 읽었습니다.", "For three hours.", "三个小时。")),
        ],
        "mask": ["topic"],
    },
    {
        "slots": ["time", "dish", "ingredient"],
        "sentences": [
            ("{time} {name|은} 시장에 장을 보러 갔다.", "{time}, {name} went shopping at the market.",
             "{time}，{name}去市场买菜。"),
            ("{name|은} {dish|을} 만들기 위해 {ingredient|과} 채소를 샀다.",
             "{name} bought {ingredient} and vegetables to make {dish}.",
             "为了做{dish}，{name}买了{ingredient}和蔬菜。"),
            ("집에 와서 {name|은} 한 시간 동안 정성껏 요리했다.", "At home, {name} cooked carefully for an hour.",
             "回到家后，{name}认真地做了一个小时的饭。"),
            ("저녁에 가족들이 {dish|을} 맛있게 먹으며 칭찬했다.",
             "In the evening, the family enjoyed the {dish} and praised the cook.",
             "晚上，家人吃着{dish}，都称赞味道很好。"),
        ],
        "summary": ("{name|은} 시장에서 재료를 사 와 {dish|을} 만들었고 가족들에게 칭찬을 받았다.",
                    "{name} bought ingredients at the market, cooked {dish}, and was praised by the family.",
                    "{name}去市场买菜做了{dish}，得到了家人的称赞。"),
        "qa": [
            (("{name|은} 무엇을 만들려고 했나요?", "What did {name} want to make?", "{name}想做什么菜？"),
             ("{dish|을} 만들려고 했습니다.", "{dish}.", "{dish}。")),
            (("{name|은} 시장에서 무엇을 샀나요?", "What did {name} buy at the market?", "{name}在市场买了什么？"),
             ("{ingredient|과} 채소를 샀습니다.", "{ingredient} and vegetables.", "{ingredient}和蔬菜。")),
        ],
        "mask": ["dish", "ingredient"],
    },
    {
        "slots": ["time", "distance", "friend"],
        "sentences": [
            ("{time} {name|은} 친구 {friend|과} 공원에서 만났다.", "{time}, {name} met a friend, {friend}, at the park.",
             "{time}，{name}和朋友{friend}在公园见面。"),
            ("두 사람은 호수 둘레를 따라 {distance|을} 달렸다.", "The two of them ran {distance} around the lake.",
             "两个人沿着湖边跑了{distance}。"),
            ("중간에 비가 내리기 시작했지만 그들은 멈추지 않았다.", "It started to rain halfway, but they did not stop.",
             "跑到一半开始下雨，但他们没有停下来。"),
            ("운동을 마친 뒤 {name|은} 다음 주에도 함께 달리자고 약속했다.",
             "After the run, {name} promised to run together again next week.",
             "跑完步后，{name}约好下周再一起跑。"),
        ],
        "summary": ("{name|은} 친구 {friend|과} 비를 맞으며 공원에서 {distance|을} 달렸다.",
                    "{name} and {friend} ran {distance} in the park despite the rain.",
                    "{name}和{friend}冒雨在公园跑了{distance}。"),
        "qa": [
            (("{name|은} 누구와 함께 달렸나요?", "Who did {name} run with?", "{name}和谁一起跑步？"),
             ("친구 {friend|과} 함께 달렸습니다.", "With a friend, {friend}.", "和朋友{friend}。")),
            (("두 사람은 얼마나 달렸나요?", "How far did they run?", "他们跑了多远？"),
             ("{distance|을} 달렸습니다.", "{distance}.", "{distance}。")),
        ],
        "mask": ["distance"],
    },
    {
        "slots": ["time", "city", "exhibit"],
        "sentences": [
            ("{time} {name|은} 가족과 함께 {city}에 있는 박물관을 찾았다.",
             "{time}, {name} visited a museum in {city} with the family.",
             "{time}，{name}和家人参观了{city}的一家博物馆。"),
            ("그곳에서는 {exhibit}에 관한 특별 전시가 열리고 있었다.",
             "A special exhibition on {exhibit} was being held there.", "那里正在举办关于{exhibit}的特别展览。"),
            ("{name|은} 안내원의 설명을 들으며 오래된 유물을 자세히 살펴보았다.",
             "{name} listened to the guide and looked closely at the old artifacts.",
             "{name}一边听讲解员介绍，一边仔细观看古老的文物。"),
            ("{name|은} 기념품 가게에서 작은 엽서를 사서 친구에게 보냈다.",
             "At the gift shop, {name} bought a small postcard and sent it to a friend.",
             "在纪念品商店，{name}买了一张明信片寄给朋友。"),
        ],
        "summary": ("{name|은} 가족과 {city}의 박물관에서 {exhibit} 전시를 관람했다.",
                    "{name} and the family saw an exhibition on {exhibit} at a museum in {city}.",
                    "{name}和家人在{city}的博物馆参观了{exhibit}展览。"),
        "qa": [
            (("{name|은} 어느 도시의 박물관에 갔나요?", "In which city was the museum {name} visited?",
              "{name}参观的博物馆在哪个城市？"),
             ("{city}입니다.", "In {city}.", "{city}。")),
            (("박물관에서는 어떤 전시가 열리고 있었나요?", "What was the special exhibition about?",
              "博物馆正在举办什么展览？"),
             ("{exhibit}에 관한 특별 전시였습니다.", "It was about {exhibit}.", "关于{exhibit}的特别展览。")),
        ],
        "mask": ["exhibit", "city"],
    },
    {
        "slots": ["project", "day"],
        "sentences": [
            ("{name|은} 회사에서 새로운 {project} 프로젝트를 맡게 되었다.",
             "{name} was put in charge of a new {project} project at work.", "{name}在公司负责一个新的{project}项目。"),
            ("첫 주에 {name|은} 팀원들과 회의를 하며 일정을 정했다.",
             "In the first week, {name} met with the team and set a schedule.", "第一周，{name}和同事们开会制定了计划。"),
            ("마감 직전에 문제가 생겼지만 {name|은} 밤늦게까지 일해 해결했다.",
             "A problem came up just before the deadline, but {name} worked late and fixed it.",
             "截止日期前出了问题，但{name}加班到深夜解决了。"),
            ("프로젝트는 {day}에 성공적으로 마무리되었다.", "The project was finished successfully on {day}.",
             "项目在{day}顺利完成。"),
        ],
        "summary": ("{name|은} 어려움을 이겨내고 {project} 프로젝트를 {day}에 성공적으로 끝냈다.",
                    "{name} overcame a last-minute problem and finished the {project} project on {day}.",
                    "{name}克服困难，在{day}顺利完成了{project}项目。"),
        "qa": [
            (("{name|은} 어떤 프로젝트를 맡았나요?", "What project was {name} in charge of?", "{name}负责什么项目？"),
             ("{project} 프로젝트를 맡았습니다.", "A {project} project.", "{project}项目。")),
            (("프로젝트는 언제 마무리되었나요?", "When was the project finished?", "项目什么时候完成的？"),
             ("{day}에 마무리되었습니다.", "On {day}.", "{day}。")),
        ],
        "mask": ["project"],
    },
    {
        "slots": ["time", "city", "scenery", "dish"],
        "sentences": [
            ("{time} {name|은} 기차를 타고 {city|로} 여행을 떠났다.", "{time}, {name} took a train to {city}.",
             "{time}，{name}坐火车去{city}旅行。"),
            ("창밖으로 보이는 {scenery|이} 무척 아름다웠다.", "The {scenery} outside the window looked beautiful.",
             "窗外的{scenery}非常美丽。"),
            ("도착한 뒤 {name|은} 현지 식당에서 {dish|을} 먹었다.", "After arriving, {name} ate {dish} at a local restaurant.",
             "到达后，{name}在当地餐馆吃了{dish}。"),
            ("여행 마지막 날에 {name|은} 사진을 정리하며 일기를 썼다.",
             "On the last day of the trip, {name} sorted the photos and wrote in a diary.",
             "旅行的最后一天，{name}整理照片并写了日记。"),
        ],
        "summary": ("{name|은} 기차로 {city}에 가서 {dish|을} 먹고 여행을 기록했다.",
                    "{name} took a train to {city}, ate {dish}, and recorded the trip.",
                    "{name}坐火车去{city}旅行，吃了{dish}并记录了旅程。"),
        "qa": [
            (("{name|은} 무엇을 타고 여행을 떠났나요?", "How did {name} travel?", "{name}是怎么去旅行的？"),
             ("기차를 타고 떠났습니다.", "By train.", "坐火车。")),
            (("{name|은} 현지 식당에서 무엇을 먹었나요?", "What did {name} eat at the local restaurant?",
              "{name}在当地餐馆吃了什么？"),
             ("{dish|을} 먹었습니다.", "{dish}.", "{dish}。")),
            (("{name|은} 어디로 여행을 갔나요?", "Where did {name} travel to?", "{name}去哪里旅行了？"),
             ("{city|로} 갔습니다.", "To {city}.", "{city}。")),
        ],
        "mask": ["city", "scenery", "dish"],
    },
    {
        "slots": ["plant"],
        "sentences": [
            ("봄이 되자 {name|은} 베란다에 작은 텃밭을 만들었다.",
             "When spring came, {name} made a small garden on the balcony.", "春天到了，{name}在阳台上做了一个小菜园。"),
            ("{name|은} 화분에 {plant} 씨앗을 심고 매일 물을 주었다.",
             "{name} planted {plant} seeds in pots and watered them every day.", "{name}在花盆里种下{plant}的种子，每天浇水。"),
            ("몇 주가 지나자 초록색 새싹이 올라오기 시작했다.", "After a few weeks, green sprouts began to appear.",
             "几周后，绿色的嫩芽开始冒出来。"),
            ("여름에는 직접 기른 {plant|로} 샐러드를 만들어 먹었다.",
             "In summer, {name} made a salad with the home-grown {plant}.", "夏天，{name}用自己种的{plant}做了沙拉。"),
        ],
        "summary": ("{name|은} 베란다 텃밭에서 {plant|을} 길러 샐러드를 만들었다.",
                    "{name} grew {plant} on the balcony and made a salad with it.",
                    "{name}在阳台种{plant}，并用它做了沙拉。"),
        "qa": [
            (("{name|은} 어디에 텃밭을 만들었나요?", "Where did {name} make the garden?", "{name}在哪里做了菜园？"),
             ("베란다에 만들었습니다.", "On the balcony.", "在阳台上。")),
            (("{name|은} 무엇을 심었나요?", "What did {name} plant?", "{name}种了什么？"),
             ("{plant} 씨앗을 심었습니다.", "{plant} seeds.", "{plant}的种子。")),
        ],
        "mask": ["plant"],
    },
]

# Reviews for sentiment rows: generic sentences with an {item} slot, plus one sentence specific to
# the kind of thing reviewed.
_REVIEW_ITEMS: list[tuple[str, str, str, str]] = [  # (ko, en, zh, domain)
    ("이 식당", "restaurant", "这家餐厅", "food"), ("이 영화", "movie", "这部电影", "movie"),
    ("이 이어폰", "earphones", "这副耳机", "gadget"), ("이 호텔", "hotel", "这家酒店", "stay"),
]
_REVIEW_GENERIC: dict[str, list[tuple[str, str, str]]] = {
    "pos": [
        ("{item|은} 정말 마음에 들었어요.", "I really loved the {item}.", "我非常喜欢{item}。"),
        ("가격 대비 만족스럽습니다.", "It was worth every penny.", "性价比很高，很满意。"),
        ("다음에도 꼭 다시 선택할 거예요.", "I would definitely choose it again.", "下次还会再选择。"),
        ("친구들에게도 추천하고 싶어요.", "I would recommend it to my friends.", "我会推荐给朋友们。"),
        ("기대 이상으로 훌륭했습니다.", "It was far better than I expected.", "比我预想的好太多了。"),
    ],
    "neg": [
        ("{item|은} 정말 실망스러웠어요.", "I was really disappointed with the {item}.", "{item}真让人失望。"),
        ("돈이 아까운 경험이었습니다.", "It was a waste of money.", "完全是浪费钱。"),
        ("다시는 선택하지 않을 거예요.", "I will never choose it again.", "再也不会选择了。"),
        ("설명과 너무 달라서 화가 났어요.", "It was nothing like the description, which made me angry.",
         "和描述差太多了，让人生气。"),
        ("기대했는데 생각보다 많이 별로였어요.", "I had high hopes, but it was much worse than I thought.",
         "本来很期待，结果比想象的差很多。"),
    ],
}
_REVIEW_SPECIFIC: dict[tuple[str, str], list[tuple[str, str, str]]] = {
    ("food", "pos"): [("음식이 따뜻하고 양도 넉넉했어요.", "The food was warm and the portions were generous.",
                       "饭菜热乎，分量也很足。"),
                      ("직원들이 친절하고 분위기도 좋았어요.", "The staff were friendly and the place felt cosy.",
                       "服务员很热情，环境也很舒服。")],
    ("food", "neg"): [("음식이 식어서 나왔고 너무 짰어요.", "The food arrived cold and was far too salty.",
                       "菜上来是凉的，而且太咸了。"),
                      ("주문하고 한 시간이나 기다렸어요.", "We waited a whole hour after ordering.", "点完菜等了整整一个小时。")],
    ("movie", "pos"): [("배우들의 연기가 자연스럽고 결말이 감동적이었어요.", "The acting felt natural and the ending was moving.",
                        "演员的表演很自然，结局很感人。"),
                       ("음악과 영상미가 정말 아름다웠어요.", "The music and the camera work were beautiful.",
                        "音乐和画面都非常美。")],
    ("movie", "neg"): [("줄거리가 지루해서 중간에 잠들 뻔했어요.", "The plot was so dull I almost fell asleep.",
                        "剧情太无聊，我差点睡着。"),
                       ("결말이 너무 허무했어요.", "The ending felt completely pointless.", "结局太让人无语了。")],
    ("gadget", "pos"): [("음질이 깨끗하고 배터리도 오래가요.", "The sound is clear and the battery lasts a long time.",
                         "音质清晰，电池也很耐用。"),
                        ("가볍고 착용감이 편해요.", "They are light and comfortable to wear.", "很轻，戴着也舒服。")],
    ("gadget", "neg"): [("일주일 만에 한쪽 소리가 안 나요.", "One side stopped working after a week.", "用了一周一边就没声音了。"),
                        ("연결이 자꾸 끊겨서 불편해요.", "The connection keeps dropping, which is annoying.",
                         "连接老是断，很不方便。")],
    ("stay", "pos"): [("방이 깨끗하고 침대가 편안했어요.", "The room was clean and the bed was comfortable.",
                       "房间很干净，床也很舒服。"),
                      ("창밖 전망이 정말 멋졌어요.", "The view from the window was wonderful.", "窗外的景色非常棒。")],
    ("stay", "neg"): [("방에서 냄새가 나고 밤새 시끄러웠어요.", "The room smelled bad and it was noisy all night.",
                       "房间有异味，整晚都很吵。"),
                      ("체크인이 너무 오래 걸렸어요.", "Check-in took far too long.", "办理入住花了太长时间。")],
}
_SENTIMENT_LABELS = {"pos": ("긍정", "positive", "正面"), "neg": ("부정", "negative", "负面")}

# ---------------------------------------------------------------------------------------------
# Instruction templates: three per task type per language. Each entry is (instruction, style).
# ---------------------------------------------------------------------------------------------

_INSTRUCTIONS: dict[str, dict[str, list[tuple[str, str]]]] = {
    "summarization": {
        "ko": [("다음 글을 한 문장으로 요약하세요.", ""), ("아래 내용을 읽고 핵심만 간단히 요약해 주세요.", ""),
               ("주어진 글의 요지를 한 문장으로 정리하시오.", "")],
        "en": [("Summarize the following passage in one sentence.", ""),
               ("Read the text below and write a brief summary.", ""),
               ("Give a one-sentence summary of the paragraph.", "")],
        "zh": [("请用一句话概括下面这段文字。", ""), ("阅读以下内容，并写出简短的摘要。", ""), ("请总结这段话的主要内容。", "")],
    },
    "question_answering": {
        "ko": [("다음 글을 읽고 질문에 답하세요.", ""), ("지문을 참고하여 아래 질문에 대한 답을 작성하시오.", ""),
               ("주어진 내용을 바탕으로 질문에 짧게 답해 주세요.", "")],
        "en": [("Read the passage and answer the question.", ""), ("Answer the question based on the text below.", ""),
               ("Using the information in the passage, give a short answer to the question.", "")],
        "zh": [("阅读下面的短文，回答问题。", ""), ("根据以下内容回答问题。", ""), ("请根据短文内容简要回答下面的问题。", "")],
    },
    "sentence_ordering": {
        "ko": [("다음 문장들을 자연스러운 순서로 배열하세요.", "order"),
               ("아래 문장의 순서가 뒤섞여 있습니다. 올바른 순서를 번호로 답하시오.", "order"),
               ("뒤섞인 문장을 올바른 순서로 다시 써 주세요.", "text")],
        "en": [("Arrange the following sentences in a logical order.", "order"),
               ("The sentences below are shuffled. Give the correct order as a sequence of numbers.", "order"),
               ("Rewrite the shuffled sentences in the correct order.", "text")],
        "zh": [("请将下列句子按正确的顺序排列。", "order"), ("以下句子顺序被打乱了，请用序号写出正确顺序。", "order"),
               ("请把打乱的句子按正确顺序重新写出来。", "text")],
    },
    "last_sentence_prediction": {
        "ko": [("다음 글의 마지막 문장으로 가장 알맞은 것을 고르세요.", "choice"), ("이어질 마지막 문장을 작성하세요.", "free"),
               ("글의 흐름에 맞게 마지막 문장을 완성하시오.", "free")],
        "en": [("Choose the most appropriate final sentence for the passage.", "choice"),
               ("Write the sentence that most naturally ends the story.", "free"),
               ("Predict the last sentence of the following paragraph.", "free")],
        "zh": [("请为下面的短文选择最合适的最后一句。", "choice"), ("请写出这段话最自然的结尾句。", "free"),
               ("根据上下文，预测这段文字的最后一句话。", "free")],
    },
    "mask_prediction": {
        "ko": [("다음 글에서 [MASK]에 들어갈 알맞은 단어를 쓰세요.", "[MASK]"), ("빈칸(___)에 들어갈 말을 채우시오.", "___"),
               ("문맥에 맞게 [MASK] 부분을 채워 주세요.", "[MASK]")],
        "en": [("Replace the [MASK] token in the passage with the right word.", "[MASK]"),
               ("Fill in the blank (___) with the missing words.", "___"),
               ("Which word or phrase belongs in the [MASK] position?", "[MASK]")],
        "zh": [("请填写文中[MASK]处缺少的词语。", "[MASK]"), ("请在横线（___）处填入合适的词。", "___"),
               ("根据上下文，[MASK]处应该填什么？", "[MASK]")],
    },
    "translation": {
        "ko": [("다음 문장을 {tgt}로 번역하세요.", ""), ("아래 한국어 문장을 자연스러운 {tgt}로 옮겨 주세요.", ""),
               ("주어진 문장을 {tgt}로 번역하시오.", "")],
        "en": [("Translate the following sentence into {tgt}.", ""),
               ("Render this English sentence in natural {tgt}.", ""), ("Please translate the text below into {tgt}.", "")],
        "zh": [("请把下面的句子翻译成{tgt}。", ""), ("将以下中文句子译为{tgt}。", ""), ("请将这句话翻译成{tgt}。", "")],
    },
    "sentiment_classification": {
        "ko": [("다음 리뷰의 감정을 긍정 또는 부정으로 분류하세요.", ""), ("이 후기가 긍정적인지 부정적인지 판단해 주세요.", ""),
               ("문장의 감성을 분석하여 긍정/부정으로 답하시오.", "")],
        "en": [("Classify the sentiment of the following review as positive or negative.", ""),
               ("Is this review positive or negative?", ""),
               ("Determine the sentiment of the text below (positive/negative).", "")],
        "zh": [("判断下面评论的情感是正面还是负面。", ""), ("请对以下评价进行情感分类（正面/负面）。", ""),
               ("这条评论表达的是正面还是负面情绪？", "")],
    },
}
_TARGET_NAMES = {"ko": {"en": "영어", "zh": "중국어"}, "en": {"ko": "Korean", "zh": "Chinese"},
                 "zh": {"en": "英文", "ko": "韩文"}}
_QUESTION_LABEL = {"ko": "질문: ", "en": "Question: ", "zh": "问题："}
_OPTIONS_LABEL = {"ko": "선택지:", "en": "Options:", "zh": "选项："}
_ORDER_LABEL = {"ko": "순서: ", "en": "Order: ", "zh": "顺序："}
_ORDER_SEP = {"ko": ", ", "en": ", ", "zh": "、"}

# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------

_JOSA = {"은": ("은", "는"), "이": ("이", "가"), "을": ("을", "를"), "과": ("과", "와"), "로": ("으로", "로")}
_SLOT_RE = re.compile(r"\{(\w+)(?:\|(\w+))?\}")


def _josa(word: str, kind: str) -> str:
    """The Korean particle ``kind`` in the form that fits after ``word`` (final consonant or not)."""
    with_final, without_final = _JOSA[kind]
    code = ord(word[-1]) - 0xAC00
    final = code % 28 if 0 <= code < 11172 else 0
    if kind == "로" and final == 8:  # ㄹ final takes 로, not 으로
        return without_final
    return with_final if final else without_final


def _render(template: str, lang: str, fills: dict[str, tuple[str, ...]],
            mask: tuple[str, str] | None = None) -> str:
    """Fill ``template`` in ``lang``; ``mask=(slot, token)`` writes ``token`` in place of that slot
    (the Korean particle still follows the hidden word, as in real fill-the-blank data)."""
    li = _LI[lang]

    def sub(m: re.Match) -> str:
        word = fills[m.group(1)][li]
        shown = mask[1] if mask is not None and m.group(1) == mask[0] else word
        return shown + (_josa(word, m.group(2)) if m.group(2) else "")

    text = _SLOT_RE.sub(sub, template)
    if lang == "en" and text:
        text = text[0].upper() + text[1:]
    return text


def _join(sentences: list[str], lang: str) -> str:
    return ("" if lang == "zh" else " ").join(sentences)


def _pick_name(rng: random.Random, lang: str | None, exclude: tuple = ()) -> tuple[str, str, str]:
    pool = [n for n in _NAMES if (lang is None or n[3] == lang) and n[:3] not in exclude]
    return rng.choice(pool)[:3]


def _story(rng: random.Random, name_lang: str | None, scenario: dict | None = None):
    """Pick a scenario (unless given) and fill its slots; returns (scenario, fills)."""
    sc = scenario if scenario is not None else rng.choice(_SCENARIOS)
    fills: dict[str, tuple[str, ...]] = {"name": _pick_name(rng, name_lang)}
    for slot in sc["slots"]:
        if slot == "friend":
            fills["friend"] = _pick_name(rng, name_lang, exclude=(fills["name"],))
        else:
            fills[slot] = rng.choice(_VOCAB[slot])
    return sc, fills


# ---------------------------------------------------------------------------------------------
# One generator per task type: (rng, lang) -> (instruction, input, output)
# ---------------------------------------------------------------------------------------------

def _gen_summarization(rng: random.Random, lang: str) -> tuple[str, str, str]:
    instr, _ = rng.choice(_INSTRUCTIONS["summarization"][lang])
    sc, fills = _story(rng, lang)
    passage = _join([_render(s[_LI[lang]], lang, fills) for s in sc["sentences"]], lang)
    return instr, passage, _render(sc["summary"][_LI[lang]], lang, fills)


def _gen_question_answering(rng: random.Random, lang: str) -> tuple[str, str, str]:
    instr, _ = rng.choice(_INSTRUCTIONS["question_answering"][lang])
    sc, fills = _story(rng, lang)
    passage = _join([_render(s[_LI[lang]], lang, fills) for s in sc["sentences"]], lang)
    q, a = rng.choice(sc["qa"])
    question = _render(q[_LI[lang]], lang, fills)
    return instr, f"{passage}\n\n{_QUESTION_LABEL[lang]}{question}", _render(a[_LI[lang]], lang, fills)


def _gen_sentence_ordering(rng: random.Random, lang: str) -> tuple[str, str, str]:
    instr, style = rng.choice(_INSTRUCTIONS["sentence_ordering"][lang])
    sc, fills = _story(rng, lang)
    sentences = [_render(s[_LI[lang]], lang, fills) for s in sc["sentences"]]
    perm = list(range(len(sentences)))
    while perm == sorted(perm):
        rng.shuffle(perm)
    shown = "\n".join(f"{i + 1}. {sentences[p]}" for i, p in enumerate(perm))
    if style == "order":
        order = [perm.index(j) + 1 for j in range(len(sentences))]
        out = _ORDER_LABEL[lang] + _ORDER_SEP[lang].join(str(k) for k in order)
    else:
        out = _join(sentences, lang)
    return instr, shown, out


def _gen_last_sentence_prediction(rng: random.Random, lang: str) -> tuple[str, str, str]:
    instr, style = rng.choice(_INSTRUCTIONS["last_sentence_prediction"][lang])
    sc, fills = _story(rng, lang)
    sentences = [_render(s[_LI[lang]], lang, fills) for s in sc["sentences"]]
    context = _join(sentences[:-1], lang)
    if style == "free":
        return instr, context, sentences[-1]
    others = [s for s in _SCENARIOS if s is not sc]
    options = [sentences[-1]]
    for other in rng.sample(others, 2):
        _, ofills = _story(rng, lang, other)
        ofills["name"] = fills["name"]
        options.append(_render(other["sentences"][-1][_LI[lang]], lang, ofills))
    rng.shuffle(options)
    listed = "\n".join(f"{i + 1}. {o}" for i, o in enumerate(options))
    k = options.index(sentences[-1]) + 1
    return instr, f"{context}\n\n{_OPTIONS_LABEL[lang]}\n{listed}", f"{k}. {sentences[-1]}"


def _gen_mask_prediction(rng: random.Random, lang: str) -> tuple[str, str, str]:
    instr, token = rng.choice(_INSTRUCTIONS["mask_prediction"][lang])
    sc, fills = _story(rng, lang)
    slot = rng.choice(sc["mask"])
    masked = _join([_render(s[_LI[lang]], lang, fills, mask=(slot, token)) for s in sc["sentences"]], lang)
    if token not in masked:  # a mistake in the scenario tables, not in the caller's input
        raise AssertionError(f"mask slot {slot!r} does not occur in the passage")
    return instr, masked, fills[slot][_LI[lang]]


def _gen_translation(rng: random.Random, lang: str) -> tuple[str, str, str]:
    tgt = rng.choice([x for x in DEMO_LANGS if x != lang])
    instr, _ = rng.choice(_INSTRUCTIONS["translation"][lang])
    instr = instr.replace("{tgt}", _TARGET_NAMES[lang][tgt])
    sc, fills = _story(rng, None)
    pool = list(sc["sentences"]) + [sc["summary"]]
    # one or two consecutive sentences
    i = rng.randrange(len(pool))
    chosen = [pool[i]]
    if i + 1 < len(sc["sentences"]) and rng.random() < 0.35:
        chosen.append(pool[i + 1])
    src = _join([_render(t[_LI[lang]], lang, fills) for t in chosen], lang)
    out = _join([_render(t[_LI[tgt]], tgt, fills) for t in chosen], tgt)
    return instr, src, out


def _gen_sentiment_classification(rng: random.Random, lang: str) -> tuple[str, str, str]:
    instr, _ = rng.choice(_INSTRUCTIONS["sentiment_classification"][lang])
    item = rng.choice(_REVIEW_ITEMS)
    polarity = rng.choice(["pos", "neg"])
    fills = {"item": item[:3]}
    parts = [rng.choice(_REVIEW_SPECIFIC[(item[3], polarity)])]
    parts += rng.sample(_REVIEW_GENERIC[polarity], rng.choice([1, 2]))
    rng.shuffle(parts)
    review = _join([_render(p[_LI[lang]], lang, fills) for p in parts], lang)
    return instr, review, _SENTIMENT_LABELS[polarity][_LI[lang]]


_GENERATORS = {
    "summarization": _gen_summarization,
    "question_answering": _gen_question_answering,
    "sentence_ordering": _gen_sentence_ordering,
    "last_sentence_prediction": _gen_last_sentence_prediction,
    "mask_prediction": _gen_mask_prediction,
    "translation": _gen_translation,
    "sentiment_classification": _gen_sentiment_classification,
}

# ---------------------------------------------------------------------------------------------
# Planted problems
# ---------------------------------------------------------------------------------------------

# (task_type, lang, instruction, input, output); batch b gets entries b-1, b+2, b+5 (one per language)
_TOO_SHORT: list[tuple[str, str, str, str, str]] = [
    ("translation", "ko", "번역", "안녕", "Hi"),
    ("sentiment_classification", "ko", "감정?", "굿", "긍정"),
    ("question_answering", "ko", "답?", "", "네"),
    ("question_answering", "en", "Q?", "", "yes"),
    ("translation", "en", "Translate", "hi", "안녕"),
    ("sentiment_classification", "en", "Tone?", "ok", "pos"),
    ("translation", "zh", "翻译", "你好", "Hello"),
    ("question_answering", "zh", "是吗？", "", "是"),
    ("sentiment_classification", "zh", "情感", "好", "正面"),
]
_PII_SENTENCES = {
    "email": ("자세한 내용은 {email} 주소로 문의해 주세요.", "For details, contact {email}.", "详情请发邮件至{email}。"),
    "phone": ("궁금한 점은 {phone} 번호로 연락 주세요.", "Questions? Call {phone}.", "如有疑问请拨打{phone}。"),
    "both": ("담당자 연락처: {email}, {phone}", "Contact person: {email}, {phone}", "联系人：{email}，{phone}"),
}
_PII_TASKS = ("summarization", "sentiment_classification", "translation")
_NULL_LIKE = ["<noinput>", "N/A", ""]
_N_PER_BATCH = {"empty": 2, "html": 4, "ctrl": 3, "pii": 3, "same": 2, "short": 3}
_N_NULL_LIKE_JSONL = 6
_N_CROSS_LAYOUT = 4
_N_MALFORMED = 3


def _dups_per_batch(rows_per_batch: int) -> int:
    return max(1, rows_per_batch // 24)


def _cross_batch_dups(rows_per_batch: int) -> int:
    return max(1, rows_per_batch // 40)


def demo_planted(rows_per_batch: int = 240) -> dict[str, int]:
    """How many of each planted problem ``write_demo_batches`` writes for this batch size."""
    _check_rows(rows_per_batch)
    within = 3 * _dups_per_batch(rows_per_batch)
    cross = _cross_batch_dups(rows_per_batch)
    per = _N_PER_BATCH
    return {
        "rows_total": 3 * rows_per_batch,
        "exact_duplicate_copies": within + cross,
        "within_batch_duplicates": within,
        "cross_batch_duplicates": cross,
        "cross_layout_copies": _N_CROSS_LAYOUT,
        "empty_outputs": 3 * per["empty"],
        "null_like_inputs": _N_NULL_LIKE_JSONL,
        "html_junk": 3 * per["html"],
        "control_chars": 3 * per["ctrl"],
        "pii_rows": 3 * per["pii"],
        "pii_emails": 3 * 2,  # per batch: one e-mail-only row and one row with both
        "pii_phones": 3 * 2,
        "output_equals_input": 3 * per["same"],
        "too_short": 3 * per["short"],
        "malformed_jsonl_lines": _N_MALFORMED,
    }


def _check_rows(rows_per_batch: int) -> None:
    if not isinstance(rows_per_batch, int) or isinstance(rows_per_batch, bool):
        raise TypeError(f"rows_per_batch must be an int, got {type(rows_per_batch).__name__}")
    if rows_per_batch < MIN_ROWS_PER_BATCH:
        raise ValueError(f"rows_per_batch must be at least {MIN_ROWS_PER_BATCH} (room for the planted "
                         f"problems and every task type in every language), got {rows_per_batch}")


DEMO_PLANTED: dict[str, int] = demo_planted(240)


def _row(task: str, lang: str, instruction: str, input: str, output: str, plant: str | None = None) -> dict:
    return {"instruction": instruction, "input": input, "output": output, "task_type": task, "lang": lang,
            "plant": plant}


def _template_rows(rng: random.Random, n: int, seen: set) -> list[dict]:
    """``n`` distinct template rows, languages in the fixed shares, task types spread evenly."""
    n_ko = round(n * DEMO_LANG_SHARES["ko"])
    n_en = round(n * DEMO_LANG_SHARES["en"])
    plan: list[tuple[str, str]] = []
    for lang, count in (("ko", n_ko), ("en", n_en), ("zh", n - n_ko - n_en)):
        offset = rng.randrange(len(DEMO_TASK_TYPES))
        plan += [(DEMO_TASK_TYPES[(offset + i) % len(DEMO_TASK_TYPES)], lang) for i in range(count)]
    rng.shuffle(plan)
    rows = []
    for task, lang in plan:
        for _attempt in range(200):
            ins, inp, out = _GENERATORS[task](rng, lang)
            key = (ins + _PROMPT_SEP + inp, out)
            if key not in seen:
                break
        else:  # the vocabularies are far larger than any sensible batch; say so if not
            raise RuntimeError(f"could not generate a new distinct {task}/{lang} row after 200 tries; "
                               f"rows_per_batch is too large for the demo vocabularies")
        seen.add(key)
        rows.append(_row(task, lang, ins, inp, out))
    return rows


def _html(text: str, variant: int, lang: str) -> str:
    if variant == 0:
        return f"<p>{text}</p>"
    if variant == 1:
        mark = "。" if lang == "zh" else ". "
        if mark in text:
            return text.replace(mark, mark.rstrip() + "<br/>", 2)
        return text + "<br/>"
    if variant == 2:
        return "&nbsp;" + text.replace(" ", "&nbsp;", 1) + "&nbsp;"
    return f'<div class="article-body"><span>{text}</span></div>'


def _mid(text: str) -> int:
    return max(1, len(text) // 2)


def _plant_batch(rng: random.Random, rows: list[dict], batch: int, jsonl: bool) -> None:
    """Apply the per-batch planted problems in place, each to its own template row."""
    per = _N_PER_BATCH
    n_needed = per["empty"] + per["html"] + per["ctrl"] + per["pii"] + per["same"]
    if jsonl:
        n_needed += _N_NULL_LIKE_JSONL
    # personal data goes into inputs where a reader could plausibly have pasted it (a review, a text
    # to summarize or translate); the other problems may land on any template row
    pii_pool = [i for i, r in enumerate(rows) if r["task_type"] in _PII_TASKS]
    pii_targets = rng.sample(pii_pool, per["pii"])
    rest = [i for i in range(len(rows)) if i not in set(pii_targets)]
    targets = rng.sample(rest, n_needed - per["pii"])
    it = iter(targets)

    for k in range(per["empty"]):
        r = rows[next(it)]
        r["output"], r["plant"] = ("" if k == 0 else "   "), "empty_output"
    for k in range(per["html"]):
        r = rows[next(it)]
        r["input"], r["plant"] = _html(r["input"], k % 4, r["lang"]), "html_junk"
    for k in range(per["ctrl"]):
        r = rows[next(it)]
        if k % 3 == 0:
            s = r["instruction"]
            r["instruction"] = s[:_mid(s)] + "\u200b" + s[_mid(s):]
        elif k % 3 == 1:
            s = r["output"]
            r["output"] = "\ufeff" + s[:_mid(s)] + "\u200d" + s[_mid(s):]
        else:
            s = r["input"]
            r["input"] = s[:_mid(s)] + "\x07" + s[_mid(s):] + "\x1b"
        r["plant"] = "control_chars"
    kinds = ["email", "phone", "both"]
    for k, i in enumerate(pii_targets):
        r = rows[i]
        kind = kinds[k % 3]
        email = f"user{rng.randrange(100, 1000)}@example.com"
        phone = f"010-{rng.randrange(1000, 10000)}-{rng.randrange(1000, 10000)}"
        sentence = _PII_SENTENCES[kind][_LI[r["lang"]]].format(email=email, phone=phone)
        sep = "" if r["lang"] == "zh" else " "
        r["input"], r["plant"] = r["input"] + sep + sentence, "pii:" + kind
    for _k in range(per["same"]):
        r = rows[next(it)]
        r["plant"] = "output_equals_input"  # resolved per layout when serialized
    if jsonl:
        for k in range(_N_NULL_LIKE_JSONL):
            r = rows[next(it)]
            r["input"], r["plant"] = _NULL_LIKE[k % 3], "null_like_input"

    for j in (batch - 1, batch + 2, batch + 5):
        task, lang, ins, inp, out = _TOO_SHORT[j]
        rows.insert(rng.randrange(len(rows) + 1), _row(task, lang, ins, inp, out, "too_short"))


def _insert_copies(rng: random.Random, rows: list[dict], copies: list[dict]) -> None:
    for c in copies:
        rows.insert(rng.randrange(len(rows) + 1), c)


def _clean_sources(rows: list[dict], k: int, rng: random.Random, exclude: set[int] = frozenset()) -> list[int]:
    pool = [i for i, r in enumerate(rows) if r["plant"] is None and i not in exclude]
    return rng.sample(pool, k)


def _to_prompt(row: dict) -> dict:
    prompt = row["instruction"] + (_PROMPT_SEP + row["input"] if row["input"] else "")
    out = prompt if row["plant"] == "output_equals_input" else row["output"]
    return {"prompt": prompt, "completion": out, "task_type": row["task_type"], "lang": row["lang"]}


def _to_jsonl_record(row: dict) -> dict:
    out = row["input"] if row["plant"] == "output_equals_input" else row["output"]
    return {"instruction": row["instruction"], "input": row["input"], "output": out,
            "task_type": row["task_type"], "lang": row["lang"]}


def demo_rows(seed: int = 0, rows_per_batch: int = 240) -> list[list[dict]]:
    """The three batches as lists of records, each in its file's layout (malformed lines excluded).

    Record order is file order. Useful for tests and for callers that want the data without files.
    """
    batches, _malformed = _build(seed, rows_per_batch)
    return batches


def _build(seed: int, rows_per_batch: int) -> tuple[list[list[dict]], list[tuple[int, str]]]:
    _check_rows(rows_per_batch)
    rng = random.Random(f"purify-demo:{seed}")
    seen: set = set()
    dups = _dups_per_batch(rows_per_batch)
    cross = _cross_batch_dups(rows_per_batch)
    n_short = _N_PER_BATCH["short"]

    # batch 1: JSONL, instruction / input / output
    b1 = _template_rows(rng, rows_per_batch - dups - n_short, seen)
    _plant_batch(rng, b1, 1, jsonl=True)
    src1 = _clean_sources(b1, dups + _N_CROSS_LAYOUT, rng)
    dup_src1, cross_layout_src = src1[:dups], src1[dups:]
    b1_recs = [_to_jsonl_record(r) for r in b1]
    cross_layout = [_to_prompt(b1[i]) for i in cross_layout_src]
    _insert_copies(rng, b1_recs, [dict(b1_recs[i]) for i in dup_src1])

    # batch 2: JSON array, prompt / completion
    b2 = _template_rows(rng, rows_per_batch - dups - n_short - _N_CROSS_LAYOUT, seen)
    _plant_batch(rng, b2, 2, jsonl=False)
    src2 = _clean_sources(b2, dups + cross, rng)
    b2_recs = [_to_prompt(r) for r in b2]
    to_batch3 = [dict(b2_recs[i]) for i in src2[dups:]]
    _insert_copies(rng, b2_recs, [dict(b2_recs[i]) for i in src2[:dups]] + cross_layout)

    # batch 3: CSV, question / answer
    b3 = _template_rows(rng, rows_per_batch - dups - n_short - cross, seen)
    _plant_batch(rng, b3, 3, jsonl=False)
    src3 = _clean_sources(b3, dups, rng)
    b3_recs = [_to_prompt(r) for r in b3]
    _insert_copies(rng, b3_recs, [dict(b3_recs[i]) for i in src3] + to_batch3)
    b3_recs = [{"question": r["prompt"], "answer": r["completion"], "task_type": r["task_type"],
                "lang": r["lang"]} for r in b3_recs]

    # malformed JSONL lines: (position in the record list, raw line); never among the first 5 lines
    extra_sc, extra_fills = _story(rng, "ko")
    extra = _to_jsonl_record(_row("summarization", "ko", _INSTRUCTIONS["summarization"]["ko"][0][0],
                                  _join([_render(s[0], "ko", extra_fills) for s in extra_sc["sentences"]], "ko"),
                                  _render(extra_sc["summary"][0], "ko", extra_fills)))
    full = json.dumps(extra, ensure_ascii=False)
    bad = [
        full[: len(full) // 2],
        "=== 아래 데이터는 검수 전입니다 (export continued) ===",
        "{'instruction': 'Summarize the text.', 'input': 'The meeting moved to Friday.', 'output': 'Moved.'}",
    ]
    positions = sorted(rng.sample(range(5, len(b1_recs)), _N_MALFORMED))
    malformed = list(zip(positions, bad))
    return [b1_recs, b2_recs, b3_recs], malformed


def write_demo_batches(folder: Path, seed: int = 0, rows_per_batch: int = 240) -> list[Path]:
    """Write the three demo batch files into ``folder`` (created if missing) and return their paths.

    Same ``seed`` and ``rows_per_batch`` give the same bytes. Existing files of the same names are
    overwritten.
    """
    folder = Path(folder)
    batches, malformed = _build(seed, rows_per_batch)
    folder.mkdir(parents=True, exist_ok=True)
    p1, p2, p3 = (folder / name for name in DEMO_FILE_NAMES)

    lines = [json.dumps(r, ensure_ascii=False) for r in batches[0]]
    for offset, (pos, raw) in enumerate(malformed):  # positions ascending; shift by lines already added
        lines.insert(pos + offset, raw)
    p1.write_bytes(("\n".join(lines) + "\n").encode("utf-8"))

    p2.write_bytes((json.dumps(batches[1], ensure_ascii=False, indent=2) + "\n").encode("utf-8"))

    buf = io.StringIO(newline="")
    writer = csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    cols = ["question", "answer", "task_type", "lang"]
    writer.writerow(cols)
    for r in batches[2]:
        writer.writerow([r[c] for c in cols])
    p3.write_bytes(buf.getvalue().encode("utf-8"))
    return [p1, p2, p3]


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="Write purify's generated demo batches into FOLDER.")
    ap.add_argument("folder", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rows", type=int, default=240, help="records per batch file (default 240)")
    args = ap.parse_args(argv)
    for p in write_demo_batches(args.folder, seed=args.seed, rows_per_batch=args.rows):
        print(p)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
